// One place that lists the server features that are not built yet.
//
// Every test declares the features it needs (`needs: [...]`, transports and protocols included);
// a test that needs a pending feature is reported as *skipped* with the reason, never as passed.
//
// Override the default set with the environment variable TIDINGS_PENDING (comma-separated list).
// `TIDINGS_PENDING= npm test` (empty) runs everything.

import { test } from 'node:test';

/** Every feature name a test may declare (typos are rejected at load time). */
export const FEATURES = new Set([
  // transports and protocols
  'websockets',
  'sse',
  'longpolling',
  'json',
  'msgpack',
  // hub features
  'streaming', // server->client streams (Stream, Counter, InfiniteStream, ...) and their error texts
  'upload-streams', // client->server streams (StreamingConcat)
  'client-results', // GET /clientresult/{id}
  'auth', // /authorizedhub + /generateJwtToken
  'stateful-reconnect', // Ack/Sequence over WebSockets (/testhub)
  'uncreatable', // /uncreatable
  'redirect', // /redirect negotiate redirect
  'close-connection', // CloseConnection(error, allowReconnect)
]);

/**
 * What the server does not implement yet (edit this as the server grows). As of the first full
 * run against examples/testhub.rs every feature above is built, so nothing is pending; add a
 * name here (or use TIDINGS_PENDING) when a feature is knowingly missing, e.g. on a branch.
 */
export const DEFAULT_PENDING = [];

function parsePending() {
  const env = process.env.TIDINGS_PENDING;
  if (env === undefined) return new Set(DEFAULT_PENDING);
  const list = env
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const f of list) {
    if (!FEATURES.has(f)) throw new Error(`TIDINGS_PENDING names an unknown feature '${f}' (known: ${[...FEATURES].join(', ')})`);
  }
  return new Set(list);
}

export const PENDING = parsePending();

/** The skip reason for a test needing `needs`, or `false` when it can run. */
export function pendingReason(needs = []) {
  for (const f of needs) {
    if (!FEATURES.has(f)) throw new Error(`unknown feature '${f}' in needs (known: ${[...FEATURES].join(', ')})`);
  }
  const missing = [...new Set(needs)].filter((f) => PENDING.has(f));
  if (missing.length === 0) return false;
  return `pending: server feature(s) not built yet: ${missing.join(', ')} (lib/pending.mjs; run with TIDINGS_PENDING= to include)`;
}

/**
 * `node:test`'s `test`, with `needs` turned into `skip`.
 * ptest(name, { needs: ['streaming'], timeout: 10000 }, async (t) => { ... })
 */
export function ptest(name, opts, fn) {
  const { needs = [], skip, ...rest } = opts ?? {};
  const reason = skip || pendingReason(needs);
  return test(name, { timeout: 60_000, ...rest, skip: reason }, fn);
}
