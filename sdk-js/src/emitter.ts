// A minimal typed event emitter shared by the client and its subscriptions.

export type Listener<V> = (value: V) => void;

export class Emitter<Events extends object> {
  private _listeners: { [K in keyof Events]?: Set<Listener<Events[K]>> } = {};

  /**
   * Calls `listener` for every `event` from now on; returns a function that
   * removes it again.
   */
  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    const set = (this._listeners[event] ??= new Set());
    set.add(listener);
    return () => set.delete(listener);
  }

  /** @internal Whether anyone listens for `event`. */
  _has(event: keyof Events): boolean {
    return !!this._listeners[event]?.size;
  }

  /**
   * @internal A listener that throws does not break the SDK: its error is
   * rethrown on its own, where the runtime reports uncaught errors.
   */
  _emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const listener of this._listeners[event] ?? []) {
      try {
        listener(value);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}
