// Compile-time checks of the public types (run by `npm run typecheck`):
// topic maps type payloads for publish and subscribe, wildcards included.
// Each `@ts-expect-error` line must fail to compile, or tsc reports it.

import { Client, type ConnectionState, type Message, type Published, SockeyeError } from "../src/index.js";

interface Order {
  id: number;
}
type Topics = {
  "orders.created": Order;
  "chat.*": { text: string };
};

const client = new Client<Topics>({ url: "ws://127.0.0.1:8080/ws", token: "jwt" });

export async function typed(): Promise<void> {
  const stored: Published = await client.publish("orders.created", { id: 1 });
  const none: undefined = await client.publish("chat.lobby", { text: "hi" }, { ack: false });
  // @ts-expect-error the payload of orders.created is an Order
  await client.publish("orders.created", { text: "no" });
  // @ts-expect-error chat.* payloads have a text
  await client.publish("chat.lobby", { id: 1 });

  for await (const message of client.subscribe("orders.created")) {
    const order: Order = message.payload;
    const offset: number = message.offset;
    void [order, offset];
  }
  for await (const message of client.subscribe("chat.>")) {
    const text: string = message.payload.text;
    void text;
  }
  for await (const message of client.subscribe("other.topic")) {
    // @ts-expect-error an unmapped topic's payload is unknown
    message.payload.anything;
  }
  const sub = client.subscribe("orders.created", { position: { kind: "after", epoch: 1, offset: 5 } });
  sub.on("gap", ({ from, to, epoch }) => void [from + to + epoch]);
  sub.on("reset", ({ nextOffset }) => void nextOffset);
  sub.on("error", (error: SockeyeError) => void error.code);
  // @ts-expect-error positions have the protocol's shape
  client.subscribe("orders.created", { position: { kind: "after", offset: 5 } });
  client.on("state", (state: ConnectionState) => {
    if (state.state === "closed") void [state.code, state.reason];
  });
  void [stored, none];
}

// An untyped client takes any topic and yields unknown payloads.
export async function untyped(plain: Client): Promise<void> {
  await plain.publish("any.topic", [1, 2, 3]);
  const message: Message<unknown> | undefined = undefined;
  void message;
}
