/**
 * The event pattern every component follows: a private eventemitter3 emitter
 * typed by an event map of function signatures, exposed only through `on`,
 * `once` and `off`. `on` returns a disposable, so tests can leak-check
 * subscriptions. Events are named in the past tense and emitted after the state
 * change they report is committed.
 */
import { EventEmitter } from "eventemitter3";

export interface Disposable {
  dispose(): void;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- an event map is any set of listener signatures
export type EventMap<E> = { [K in keyof E]: (...args: any[]) => void };

export class Observable<E extends EventMap<E>> {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- eventemitter3's own constraint
  readonly #emitter = new EventEmitter<any>();

  on<K extends keyof E & string>(event: K, listener: E[K]): Disposable {
    this.#emitter.on(event, listener);
    return { dispose: () => this.#emitter.off(event, listener) };
  }

  once<K extends keyof E & string>(event: K, listener: E[K]): Disposable {
    this.#emitter.once(event, listener);
    return { dispose: () => this.#emitter.off(event, listener) };
  }

  off<K extends keyof E & string>(event: K, listener: E[K]): void {
    this.#emitter.off(event, listener);
  }

  /** Number of listeners still subscribed, for leak checks. */
  listenerCount(): number {
    let n = 0;
    for (const name of this.#emitter.eventNames()) n += this.#emitter.listenerCount(name);
    return n;
  }

  /** Hot paths ask this before building an event; no subscription at all is the common case. */
  protected hasListeners(event: keyof E & string): boolean {
    return (this.#emitter as unknown as { _eventsCount: number })._eventsCount !== 0 && this.#emitter.listenerCount(event) > 0;
  }

  protected emit<K extends keyof E & string>(event: K, ...args: Parameters<E[K]>): void {
    this.#emitter.emit(event, ...args);
  }
}
