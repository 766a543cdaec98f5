// sockeye-sdk: the Sockeye client for browsers and Node.

export { Client } from "./client.js";
export type {
  Backoff,
  ClientEvents,
  ClientOptions,
  ConnectionState,
  Published,
  PublishOptions,
  SubscribeOptions,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { SockeyeError } from "./errors.js";
export { Subscription } from "./subscription.js";
export type { Gap, Message, Position, Reset, Subscribed, SubscriptionEvents } from "./subscription.js";
export type { PayloadOf, TopicMap } from "./types.js";
