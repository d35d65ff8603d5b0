// Small bounded-waiting helpers shared by the suites.

import { randomUUID } from 'node:crypto';

/** A unique, URL-safe token for payloads and group names. */
export function uid(prefix = 'u') {
  return `${prefix}-${randomUUID()}`;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves/rejects like `promise`, or rejects after `ms` with a message naming `what`. */
export function withTimeout(promise, ms, what = 'operation') {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([Promise.resolve(promise), timeout]).finally(() => clearTimeout(timer));
}

/** A promise with its resolve/reject exposed. */
export function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Settles a promise into { ok, value, error } without throwing. */
export async function settle(promise) {
  try {
    return { ok: true, value: await promise };
  } catch (error) {
    return { ok: false, error };
  }
}

/** Expects `promise` to reject; returns the error. */
export async function rejectsWith(promise, ms, what) {
  const r = await withTimeout(settle(promise), ms, what);
  if (r.ok) throw new Error(`expected ${what} to fail, but it returned ${JSON.stringify(r.value)}`);
  return r.error;
}

/**
 * Records every call of the client method `method` on `conn` (register before start() when the
 * server may call early). `waitFor(pred, ms)` resolves with the first recorded argument list
 * matching `pred` (past or future).
 */
export function inbox(conn, method) {
  const items = [];
  let waiters = [];
  conn.on(method, (...args) => {
    items.push(args);
    waiters = waiters.filter((w) => {
      if (w.pred(...args)) {
        w.resolve(args);
        return false;
      }
      return true;
    });
  });
  return {
    items,
    has: (pred) => items.some((a) => pred(...a)),
    count: (pred) => items.filter((a) => pred(...a)).length,
    waitFor(pred, ms = 10_000, what = `${method} message`) {
      const found = items.find((a) => pred(...a));
      if (found) return Promise.resolve(found);
      const d = deferred();
      const w = { pred, resolve: d.resolve };
      waiters.push(w);
      return withTimeout(d.promise, ms, what).finally(() => {
        waiters = waiters.filter((x) => x !== w);
      });
    },
  };
}

/**
 * Subscribes to an IStreamResult and collects it: resolves { items, error, completed } when the
 * stream completes or errors; rejects after `ms`. `onItem(item, sub)` may dispose the subscription.
 */
export function collectStream(streamResult, ms = 10_000, what = 'stream', onItem) {
  const items = [];
  const d = deferred();
  let sub;
  sub = streamResult.subscribe({
    next: (item) => {
      items.push(item);
      if (onItem) onItem(item, sub, items);
    },
    complete: () => d.resolve({ items, error: null, completed: true }),
    error: (error) => d.resolve({ items, error, completed: false }),
  });
  let done = null;
  return {
    subscription: sub,
    items,
    /** The bounded outcome; created on first access (a disposed stream never settles: don't await it). */
    get done() {
      if (!done) done = withTimeout(d.promise, ms, what);
      return done;
    },
  };
}

/** The message of an error-like value. */
export function errMessage(e) {
  return e instanceof Error ? e.message : String(e);
}
