// Type-level topic matching: payload types looked up by topic name or filter.

/**
 * Maps topic names or filters to payload types, for example
 * `{ "chat.*": { text: string }; "orders.created": Order }`.
 */
export type TopicMap = Record<string, unknown>;

type Segments<S extends string> = S extends `${infer Head}.${infer Rest}` ? [Head, ...Segments<Rest>] : [S];

/** Whether filter segments `F` match topic segments `T` (`*` one segment, `>` one or more). */
type Matches<F extends string[], T extends string[]> = F extends [">"]
  ? T extends [string, ...string[]]
    ? true
    : false
  : F extends [infer FH extends string, ...infer FR extends string[]]
    ? T extends [infer TH extends string, ...infer TR extends string[]]
      ? FH extends "*" | TH
        ? Matches<FR, TR>
        : false
      : false
    : T extends []
      ? true
      : false;

type Related<A extends string, B extends string> = Matches<Segments<A>, Segments<B>> extends true
  ? true
  : Matches<Segments<B>, Segments<A>>;

/**
 * The payload type of a topic or filter `F`: the type of the key equal to
 * it, else the union of the types of every key that matches it or that it
 * matches, else `unknown`.
 */
export type PayloadOf<Topics extends TopicMap, F extends string> = string extends keyof Topics
  ? Topics[string]
  : F extends keyof Topics
    ? Topics[F]
    : [
          {
            [K in keyof Topics & string]: Related<F, K> extends true ? Topics[K] : never;
          }[keyof Topics & string],
        ] extends [never]
      ? unknown
      : {
          [K in keyof Topics & string]: Related<F, K> extends true ? Topics[K] : never;
        }[keyof Topics & string];
