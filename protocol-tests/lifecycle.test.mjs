// Connection lifecycle (contract §0, §3 CloseConnection, §4, §8): uncreatable hub, negotiate
// failure and redirect, server-initiated close, reconnect, stop, skipNegotiation, keep-alive.

import assert from 'node:assert/strict';
import { pendingReason, ptest } from './lib/pending.mjs';
import { useServer } from './lib/server.mjs';
import { CELLS, connect, matrixTest } from './lib/matrix.mjs';
import { RS, RawSocket, negotiate, request } from './lib/raw.mjs';
import { deferred, errMessage, rejectsWith, settle, sleep, uid, withTimeout } from './lib/util.mjs';

const server = await useServer(import.meta.url);
const base = server.url;
const WS_CELLS = CELLS.filter((c) => c.transport === 'WebSockets');
const NON_LP_CELLS = CELLS.filter((c) => c.transport !== 'LongPolling');
const CLOSE_PREFIX = 'Server returned an error on close: Connection closed with an error.';

// ---- /uncreatable ----

matrixTest('/uncreatable never yields a usable connection', { needs: ['uncreatable'] }, async (t, cell) => {
  const conn = await connect(t, base, cell, { path: '/uncreatable', start: false });
  const started = await withTimeout(settle(conn.start()), 15_000, 'start() on /uncreatable');
  if (!started.ok) {
    assert.ok(started.error instanceof Error, 'start() rejects with an Error');
    return;
  }
  const err = await withTimeout(conn.closed, 10_000, 'onclose on /uncreatable');
  assert.ok(err, 'onclose must carry an error');
  assert.ok(errMessage(err).startsWith(CLOSE_PREFIX), `onclose error: ${JSON.stringify(errMessage(err))}`);
  assert.equal(conn.state, 'Disconnected');
  await rejectsWith(conn.invoke('Echo', 'x'), 5_000, 'Echo on a closed /uncreatable connection');
});

// ---- /bad-negotiate ----

matrixTest('/bad-negotiate: start() fails with the exact negotiation error', {}, async (t, cell) => {
  const conn = await connect(t, base, cell, { path: '/bad-negotiate', start: false });
  const err = await rejectsWith(conn.start(), 15_000, 'start() on /bad-negotiate');
  assert.equal(errMessage(err), "Failed to complete negotiation with the server: Error: Some response from server: Status code '400'");
});

ptest('[raw] any /bad-negotiate… request → 400 "Some response from server"', {}, async () => {
  for (const [method, path] of [
    ['POST', '/bad-negotiate/negotiate?negotiateVersion=1'],
    ['GET', '/bad-negotiate'],
    ['POST', '/bad-negotiate-anything/x'],
  ]) {
    const r = await request(base + path, { method });
    assert.equal(r.status, 400, `${method} ${path}`);
    assert.equal(r.text, 'Some response from server', `${method} ${path}`);
  }
});

// ---- /redirect ----

function redirectUrl() {
  return `${base}/redirect?baseUrl=${encodeURIComponent(base)}`;
}

ptest('[raw] /redirect/negotiate answers {"url": BASE/testhub?numRedirects=N} with a growing N', { needs: ['redirect'] }, async () => {
  const fake = 'http://example.invalid:1';
  const r1 = await request(`${base}/redirect/negotiate?baseUrl=${encodeURIComponent(fake)}&negotiateVersion=1`, { method: 'POST' });
  const r2 = await request(`${base}/redirect/negotiate?baseUrl=${encodeURIComponent(fake)}&negotiateVersion=1`, { method: 'POST' });
  for (const r of [r1, r2]) {
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('content-type') ?? '', /^application\/json/i);
  }
  const u1 = JSON.parse(r1.text).url;
  const u2 = JSON.parse(r2.text).url;
  const re = /^http:\/\/example\.invalid:1\/testhub\?numRedirects=(\d+)$/;
  assert.match(u1, re);
  assert.match(u2, re);
  assert.ok(Number(re.exec(u2)[1]) > Number(re.exec(u1)[1]), `${u1} then ${u2}`);
});

matrixTest('/redirect: the client follows the redirect; GetNumRedirects returns N and grows', { needs: ['redirect'] }, async (t, cell) => {
  const c1 = await connect(t, base, cell, { url: redirectUrl(), record: true });
  const n1 = await c1.invoke('GetNumRedirects');
  assert.equal(typeof n1, 'number');
  const first = c1.http.negotiations()[0];
  assert.match(first.url, /\/testhub\?numRedirects=\d+$/);
  assert.equal(n1, Number(/numRedirects=(\d+)/.exec(first.url)[1]), 'GetNumRedirects = the N of the redirect URL');
  assert.equal(await c1.invoke('Echo', 'redirected'), 'redirected');
  const c2 = await connect(t, base, cell, { url: redirectUrl() });
  const n2 = await c2.invoke('GetNumRedirects');
  assert.ok(n2 > n1, `second connection: ${n2} must be > ${n1}`);
});

matrixTest('/redirect: after a reconnect GetNumRedirects grows', { needs: ['redirect', 'close-connection'] }, async (t, cell) => {
  const conn = await connect(t, base, cell, { url: redirectUrl(), reconnect: [0, 100, 500] });
  const n1 = await conn.invoke('GetNumRedirects');
  const reconnected = deferred();
  conn.onreconnected((id) => reconnected.resolve(id));
  await conn.send('CloseConnection', 'redirect-reconnect', true);
  await withTimeout(reconnected.promise, 15_000, 'onreconnected');
  const n2 = await conn.invoke('GetNumRedirects');
  assert.ok(n2 > n1, `after reconnect: ${n2} must be > ${n1}`);
});

// ---- CloseConnection ----

const C = { needs: ['close-connection'] };

matrixTest('CloseConnection(error) → onclose error "Server returned an error on close: ERR"', C, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const msg = uid('ERR');
  await conn.send('CloseConnection', msg, false);
  const err = await withTimeout(conn.closed, 10_000, 'onclose');
  assert.ok(err, 'onclose must carry the error');
  assert.equal(errMessage(err), `Server returned an error on close: ${msg}`);
  assert.equal(conn.state, 'Disconnected');
});

matrixTest('CloseConnection(null) → onclose without error', C, async (t, cell) => {
  const conn = await connect(t, base, cell);
  await conn.send('CloseConnection', null, false);
  const err = await withTimeout(conn.closed, 10_000, 'onclose');
  assert.equal(err, undefined, `unexpected error: ${err && errMessage(err)}`);
});

matrixTest('CloseConnection(error, allowReconnect) + withAutomaticReconnect → reconnects with a new connection id', C, async (t, cell) => {
  const conn = await connect(t, base, cell, { reconnect: [0, 100, 500] });
  const oldId = conn.connectionId;
  const reconnecting = deferred();
  const reconnected = deferred();
  conn.onreconnecting((e) => reconnecting.resolve(e));
  conn.onreconnected((id) => reconnected.resolve(id));
  const msg = uid('ERR');
  await conn.send('CloseConnection', msg, true);
  const e = await withTimeout(reconnecting.promise, 10_000, 'onreconnecting');
  assert.equal(errMessage(e), `Server returned an error on close: ${msg}`);
  const newId = await withTimeout(reconnected.promise, 15_000, 'onreconnected');
  assert.ok(newId, 'a connection id');
  assert.notEqual(newId, oldId, 'a new connection id');
  assert.equal(conn.connectionId, newId);
  assert.equal(await conn.invoke('GetCallerConnectionId'), newId);
  const v = uid('after-reconnect');
  assert.equal(await conn.invoke('Echo', v), v);
  assert.equal(conn.closeCount(), 0, 'no onclose');
});

matrixTest('CloseConnection(error, allowReconnect) without automatic reconnect → onclose with the error', C, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const msg = uid('ERR');
  await conn.send('CloseConnection', msg, true);
  const err = await withTimeout(conn.closed, 10_000, 'onclose');
  assert.equal(errMessage(err), `Server returned an error on close: ${msg}`);
});

matrixTest('CloseConnection(error, false) with automatic reconnect configured → onclose, no reconnect', C, async (t, cell) => {
  const conn = await connect(t, base, cell, { reconnect: [0, 100] });
  let reconnecting = 0;
  conn.onreconnecting(() => reconnecting++);
  const msg = uid('ERR');
  await conn.send('CloseConnection', msg, false);
  const err = await withTimeout(conn.closed, 10_000, 'onclose');
  assert.equal(errMessage(err), `Server returned an error on close: ${msg}`);
  assert.equal(reconnecting, 0);
});

// ---- stop ----

matrixTest('stop() is clean: onclose without error, state Disconnected, a new connection works', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  assert.equal(await conn.invoke('Echo', 'before stop'), 'before stop');
  await withTimeout(conn.stop(), 10_000, 'stop()');
  const err = await withTimeout(conn.closed, 5_000, 'onclose');
  assert.equal(err, undefined, `onclose error: ${err && errMessage(err)}`);
  assert.equal(conn.state, 'Disconnected');
  await rejectsWith(conn.invoke('Echo', 'x'), 5_000, 'invoke after stop');
  const again = await connect(t, base, cell);
  assert.equal(await again.invoke('Echo', 'again'), 'again');
});

matrixTest('stop() while an InfiniteStream runs is clean', { needs: ['streaming'] }, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const ended = deferred();
  conn.stream('InfiniteStream').subscribe({ next() {}, complete: () => ended.resolve('complete'), error: (e) => ended.resolve(e) });
  assert.equal(await conn.invoke('Echo', 'x'), 'x');
  await withTimeout(conn.stop(), 10_000, 'stop()');
  const err = await withTimeout(conn.closed, 5_000, 'onclose');
  assert.equal(err, undefined);
  const streamEnd = await withTimeout(ended.promise, 5_000, 'the stream to end with the connection');
  assert.ok(streamEnd instanceof Error, 'the client errors pending streams on stop');
});

// ---- skipNegotiation ----

matrixTest('skipNegotiation over WebSockets works on /testhub', { cells: WS_CELLS }, async (t, cell) => {
  const conn = await connect(t, base, cell, { skipNegotiation: true });
  assert.equal(await conn.invoke('Echo', 'skipped'), 'skipped');
  assert.equal(await conn.invoke('GetActiveTransportName'), 'WebSockets');
  const id = await conn.invoke('GetCallerConnectionId');
  assert.equal(typeof id, 'string');
  assert.ok(id.length > 0);
});

matrixTest('skipNegotiation on /testhub-nowebsockets is refused', { cells: WS_CELLS }, async (t, cell) => {
  const conn = await connect(t, base, cell, { skipNegotiation: true, path: '/testhub-nowebsockets', start: false });
  await rejectsWith(conn.start(), 15_000, 'start() with skipNegotiation on /testhub-nowebsockets');
});

// ---- keep-alive and timeouts ----

matrixTest('the client-side server timeout fires exactly when the server is silent (2 s < 15 s ping interval)', { cells: NON_LP_CELLS }, async (t, cell) => {
  const conn = await connect(t, base, cell, { serverTimeoutMs: 2_000, keepAliveMs: 1_000 });
  const err = await withTimeout(conn.closed, 10_000, 'client server-timeout');
  assert.equal(errMessage(err), 'Server timeout elapsed without receiving a message from the server.');
});

ptest('keep-alive: server pings keep idle WebSocket/SSE clients alive; a silent client is closed after ~30 s', { timeout: 90_000 }, async (t) => {
  const cells = NON_LP_CELLS.filter((c) => !pendingReason(c.needs));
  // stock clients with a 20 s server timeout: only server pings (every 15 s) can keep them open
  const conns = await Promise.all(cells.map((c) => connect(t, base, c, { serverTimeoutMs: 20_000 })));
  // a raw client that handshakes, pings once, then says nothing (the server's 30 s client timeout)
  const n = await negotiate(base, '/testhub');
  const sock = await RawSocket.open(`${base}/testhub?id=${n.json.connectionToken}`);
  t.after(() => sock.close());
  sock.send(`{"protocol":"json","version":1}${RS}`);
  const [hs] = await sock.nextRecords(1);
  assert.equal(hs, '{}');
  sock.send(`{"type":6}${RS}`);
  const silentSince = Date.now();
  let closedAt = null;
  sock.closed.then(() => (closedAt = Date.now()));

  await sleep(24_000);
  for (const c of conns) {
    assert.equal(c.state, 'Connected', `${c.cell.name}: closed while idle: ${c.log.lines.map((l) => l.message).join(' | ')}`);
    const v = uid('idle');
    assert.equal(await c.invoke('Echo', v), v);
  }
  assert.equal(closedAt, null, 'the silent client was closed before 24 s');
  await withTimeout(sock.closed, 20_000, 'the server to close a client silent for 30 s');
  const after = (closedAt - silentSince) / 1000;
  assert.ok(after >= 25 && after <= 42, `silent client closed after ${after.toFixed(1)} s (expected ~30 s)`);
});
