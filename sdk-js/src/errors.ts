// The one error type the SDK rejects and reports with, and its codes.

/**
 * Why a request failed or a subscription ended. `code` is stable:
 *
 * - a broker error code from `docs/protocol.md` section 5 (`forbidden`,
 *   `invalid_topic`, `rate_limited`, `subscription_overlaps`, ...), when the
 *   broker refused the request;
 * - or one of the SDK's own:
 *   - `invalid_topic`: the name or filter breaks the naming rules (checked
 *     before anything is sent);
 *   - `frame_too_large`: the frame would exceed the broker's
 *     `max_frame_bytes` (or its body `max_inflated_bytes`); nothing was sent;
 *   - `encode_failed`: the payload cannot be encoded as MessagePack;
 *   - `queue_full`: too many requests wait for the connection
 *     (`maxQueuedRequests` / `maxQueuedBytes`);
 *   - `timeout`: no reply within `requestTimeout` (a publish may or may not
 *     have been stored);
 *   - `connection_lost`: the connection dropped after the request was sent
 *     and before its reply (a publish may or may not have been stored; the
 *     SDK never resends it);
 *   - `closed`: the client is closed;
 *   - `malformed_frame`: the broker sent a frame this client cannot read
 *     (reported on `client.on("error")`; the client reconnects and resumes).
 */
export class SockeyeError extends Error {
  /** The stable error code. */
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.name = "SockeyeError";
    this.code = code;
  }
}

/** Shorthand used across the SDK. */
export const fail = (code: string, message: string): SockeyeError => new SockeyeError(code, message);
