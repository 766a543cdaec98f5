// Topic names and filters (protocol section 6): validation and matching.

import { fail, type SockeyeError } from "./errors.js";

const SEGMENT = /^[A-Za-z0-9_:-]+$/;

/**
 * Checks a topic name (`wildcards` false) or filter (true) against the
 * naming rules; returns the error, or undefined when it is valid.
 */
export function checkTopic(topic: string, wildcards: boolean, maxBytes: number): SockeyeError | undefined {
  const segments = typeof topic === "string" ? topic.split(".") : [];
  const valid =
    topic.length > 0 &&
    // Names are ASCII only, so characters are bytes.
    topic.length <= maxBytes &&
    segments.every(
      (segment, i) =>
        SEGMENT.test(segment) ||
        (wildcards && (segment === "*" || (segment === ">" && i === segments.length - 1))),
    );
  return valid ? undefined : fail("invalid_topic", `invalid topic ${wildcards ? "filter" : "name"} "${topic}"`);
}

/** Whether the filter has no wildcard segment. */
export const isExact = (filter: string): boolean => !/(^|\.)[*>](\.|$)/.test(filter);

/** Whether `filter` matches the topic name `topic`. */
export function matches(filter: string, topic: string): boolean {
  const f = filter.split(".");
  const t = topic.split(".");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === ">") return t.length > i;
    if (i >= t.length || (f[i] !== "*" && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}
