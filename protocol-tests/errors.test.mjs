// Error texts and error handling (contract §2, §9): stock client for everything a client can do,
// raw WebSockets only for malformed input that the stock client never sends.

import assert from 'node:assert/strict';
import { ptest } from './lib/pending.mjs';
import { useServer } from './lib/server.mjs';
import { NO_WS_CELLS, WS_JSON, WS_MSGPACK, connect, matrixTest } from './lib/matrix.mjs';
import { RS, RawSocket, negotiate, openSse, request } from './lib/raw.mjs';
import { collectStream, errMessage, rejectsWith, uid, withTimeout } from './lib/util.mjs';

const server = await useServer(import.meta.url);
const base = server.url;

const CLOSE_PREFIX = 'Server returned an error on close: Connection closed with an error.';

async function assertUsable(conn) {
  const v = uid('usable');
  assert.equal(await withTimeout(conn.invoke('Echo', v), 10_000, 'Echo after error'), v);
}

matrixTest("unknown hub method → exactly \"Unknown hub method 'NotAMethod'\"; connection stays usable", {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const err = await rejectsWith(conn.invoke('NotAMethod'), 10_000, 'invoke NotAMethod');
  assert.equal(errMessage(err), "Unknown hub method 'NotAMethod'");
  const err2 = await rejectsWith(conn.invoke('NotAMethod', 1, 'two'), 10_000, 'invoke NotAMethod with args');
  assert.equal(errMessage(err2), "Unknown hub method 'NotAMethod'");
  await assertUsable(conn);
});

matrixTest('wrong argument count or types → "Failed to invoke \'Echo\' due to an error on the server." …; connection stays usable', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const cases = [[], ['a', 'b'], [{ a: 1 }], [[1, 2]], [42], [true]];
  for (const args of cases) {
    const err = await rejectsWith(conn.invoke('Echo', ...args), 10_000, `Echo(${JSON.stringify(args)})`);
    assert.ok(
      errMessage(err).startsWith("Failed to invoke 'Echo' due to an error on the server."),
      `Echo(${JSON.stringify(args)}): got ${JSON.stringify(errMessage(err))}`,
    );
    await assertUsable(conn);
  }
  // a method with an int parameter fed a string
  const err = await rejectsWith(conn.invoke('GenerateString', 'ten'), 10_000, 'GenerateString("ten")');
  assert.ok(errMessage(err).startsWith("Failed to invoke 'GenerateString' due to an error on the server."), errMessage(err));
  await assertUsable(conn);
});

const DETAILED_THROW = "An unexpected error occurred invoking 'ThrowException' on the server. InvalidOperationException: An error occurred.";
const PLAIN_THROW = "An unexpected error occurred invoking 'ThrowException' on the server.";

matrixTest('ThrowException on /testhub (detailed errors) → exact detailed text', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const err = await rejectsWith(conn.invoke('ThrowException', 'An error occurred.'), 10_000, 'ThrowException');
  assert.equal(errMessage(err), DETAILED_THROW);
  const msg = uid('custom message');
  const err2 = await rejectsWith(conn.invoke('ThrowException', msg), 10_000, 'ThrowException(custom)');
  assert.equal(
    errMessage(err2),
    `An unexpected error occurred invoking 'ThrowException' on the server. InvalidOperationException: ${msg}`,
  );
  await assertUsable(conn);
});

matrixTest('ThrowException on /testhub-nowebsockets (detailed errors) → exact detailed text', { cells: NO_WS_CELLS }, async (t, cell) => {
  const conn = await connect(t, base, cell, { path: '/testhub-nowebsockets' });
  const err = await rejectsWith(conn.invoke('ThrowException', 'An error occurred.'), 10_000, 'ThrowException');
  assert.equal(errMessage(err), DETAILED_THROW);
});

matrixTest('ThrowException on /testhub-nodetails → exact non-detailed text', {}, async (t, cell) => {
  const conn = await connect(t, base, cell, { path: '/testhub-nodetails' });
  const err = await rejectsWith(conn.invoke('ThrowException', 'An error occurred.'), 10_000, 'ThrowException');
  assert.equal(errMessage(err), PLAIN_THROW);
  await assertUsable(conn);
});

for (const path of ['/testhub', '/testhub-nodetails']) {
  matrixTest(`ThrowHubException on ${path} → "… HubException: MSG" (always shown)`, {}, async (t, cell) => {
    const conn = await connect(t, base, cell, { path });
    const msg = uid('hub error');
    const err = await rejectsWith(conn.invoke('ThrowHubException', msg), 10_000, 'ThrowHubException');
    assert.equal(errMessage(err), `An unexpected error occurred invoking 'ThrowHubException' on the server. HubException: ${msg}`);
    await assertUsable(conn);
  });
}

for (const method of ['Stream', 'EmptyStream']) {
  matrixTest(`invoke of the streaming method ${method} → exact error`, { needs: ['streaming'] }, async (t, cell) => {
    const conn = await connect(t, base, cell);
    const err = await rejectsWith(conn.invoke(method), 10_000, `invoke ${method}`);
    assert.equal(errMessage(err), `The client attempted to invoke the streaming '${method}' method with a non-streaming invocation.`);
    await assertUsable(conn);
  });
}

matrixTest('stream() of the non-streaming Echo → exact error', { needs: ['streaming'] }, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const { done } = collectStream(conn.stream('Echo', 'x'), 10_000, "stream('Echo')");
  const r = await done;
  assert.equal(r.completed, false, `expected an error, got items ${JSON.stringify(r.items)}`);
  assert.equal(errMessage(r.error), "The client attempted to invoke the non-streaming 'Echo' method with a streaming invocation.");
  assert.deepEqual(r.items, []);
  await assertUsable(conn);
});

for (const [path, cells] of [
  ['/testhub', undefined],
  ['/testhub-nodetails', undefined],
  ['/testhub-nowebsockets', NO_WS_CELLS],
]) {
  matrixTest(`a message over 32 KiB from the client closes the connection with an error (${path}); the server stays healthy`, { cells }, async (t, cell) => {
    const conn = await connect(t, base, cell, { path });
    const pending = conn.invoke('Echo', 'q'.repeat(40_000)).then(
      (v) => ({ ok: true, v }),
      (e) => ({ ok: false, e }),
    );
    const closeErr = await withTimeout(conn.closed, 15_000, 'onclose after oversized message');
    assert.ok(closeErr, 'onclose must carry an error');
    assert.ok(errMessage(closeErr).startsWith(CLOSE_PREFIX), `onclose error: ${JSON.stringify(errMessage(closeErr))}`);
    const r = await withTimeout(pending, 5_000, 'the oversized invocation to settle');
    assert.equal(r.ok, false, 'the oversized invocation must not succeed');
    // a new connection works
    const conn2 = await connect(t, base, cell, { path });
    await assertUsable(conn2);
  });
}

// ---- raw: malformed input (never sent by the stock client) ----

async function rawHubSocket(protocol = 'json', path = '/testhub') {
  const n = await negotiate(base, path);
  assert.equal(n.status, 200);
  const sock = await RawSocket.open(`${base}${path}?id=${n.json.connectionToken}`);
  sock.send(`{"protocol":"${protocol}","version":1}${RS}`);
  const [hs] = await sock.nextRecords(1, 10_000);
  assert.equal(hs, '{}', `handshake response ${JSON.stringify(hs)}`);
  return sock;
}

async function assertClosedByServer(sock, what) {
  const info = await withTimeout(sock.closed, 10_000, `server to close the connection after ${what}`);
  assert.ok(info, 'closed');
}

ptest('[raw WebSockets/json] malformed JSON message → the server closes that connection; others go on', {}, async (t) => {
  const other = await connect(t, base, WS_JSON);
  const sock = await rawHubSocket('json');
  t.after(() => sock.close());
  sock.send(`{"type":1,"target":"Echo","arguments":[${RS}`);
  await assertClosedByServer(sock, 'malformed JSON');
  await assertUsable(other);
  const fresh = await connect(t, base, WS_JSON);
  await assertUsable(fresh);
});

ptest('[raw WebSockets/json] a non-object JSON record and an unknown message type → closed or ignored, never a crash', {}, async (t) => {
  const other = await connect(t, base, WS_JSON);
  for (const bad of ['42', '"text"', '{"type":"one"}', '{"type":99}']) {
    const sock = await rawHubSocket('json');
    sock.send(bad + RS);
    // the server may ignore it or close; either way it must keep serving
    await Promise.race([sock.closed, new Promise((r) => setTimeout(r, 300))]);
    sock.close();
  }
  await assertUsable(other);
});

ptest('[raw WebSockets/msgpack] invalid MessagePack → the server closes that connection; others go on', {}, async (t) => {
  const other = await connect(t, base, WS_MSGPACK);
  const sock = await rawHubSocket('messagepack');
  t.after(() => sock.close());
  // length 3, then an array header followed by the never-used byte 0xc1
  sock.send(Buffer.from([0x03, 0x93, 0xc1, 0xc1]), { binary: true });
  await assertClosedByServer(sock, 'invalid MessagePack');
  await assertUsable(other);
});

ptest('[raw WebSockets/msgpack] a bad length prefix → the server closes that connection', {}, async (t) => {
  const other = await connect(t, base, WS_MSGPACK);
  const sock = await rawHubSocket('messagepack');
  t.after(() => sock.close());
  sock.send(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00]), { binary: true });
  await assertClosedByServer(sock, 'bad length prefix');
  await assertUsable(other);
});

async function handshakeError(handshake) {
  const n = await negotiate(base, '/testhub');
  const sock = await RawSocket.open(`${base}/testhub?id=${n.json.connectionToken}`);
  try {
    sock.send(handshake);
    const [rec] = await sock.nextRecords(1, 10_000);
    const parsed = JSON.parse(rec);
    await assertClosedByServer(sock, 'handshake error');
    return parsed;
  } finally {
    sock.close();
  }
}

ptest('[raw WebSockets] handshake with an unknown protocol → {"error":…} then close', {}, async () => {
  const r = await handshakeError(`{"protocol":"nosuchprotocol","version":1}${RS}`);
  assert.equal(typeof r.error, 'string', JSON.stringify(r));
  assert.ok(r.error.length > 0);
});

ptest('[raw WebSockets] handshake with an unsupported version → {"error":…} then close', {}, async () => {
  const r = await handshakeError(`{"protocol":"json","version":99}${RS}`);
  assert.equal(typeof r.error, 'string', JSON.stringify(r));
});

ptest('[raw WebSockets] handshake that is not valid JSON → {"error":…} or close, never a crash', {}, async (t) => {
  const n = await negotiate(base, '/testhub');
  const sock = await RawSocket.open(`${base}/testhub?id=${n.json.connectionToken}`);
  t.after(() => sock.close());
  sock.send(`this is not json${RS}`);
  const m = await sock.next(10_000, 'error or close').catch(() => null);
  if (m) {
    const text = typeof m.data === 'string' ? m.data : m.data.toString('utf8');
    assert.ok(text.endsWith(RS), `reply ${JSON.stringify(text)}`);
    assert.equal(typeof JSON.parse(text.slice(0, -1)).error, 'string');
  }
  await assertClosedByServer(sock, 'bad handshake');
  const fresh = await connect(t, base, WS_JSON);
  await assertUsable(fresh);
});

ptest('[raw WebSockets] handshake versions 1 and 2 are both accepted', {}, async () => {
  for (const version of [1, 2]) {
    const n = await negotiate(base, '/testhub');
    const sock = await RawSocket.open(`${base}/testhub?id=${n.json.connectionToken}`);
    try {
      sock.send(`{"protocol":"json","version":${version}}${RS}`);
      const [hs] = await sock.nextRecords(1, 10_000);
      assert.equal(hs, '{}', `version ${version}`);
      sock.send(`{"type":1,"invocationId":"1","target":"Echo","arguments":["v${version}"]}${RS}`);
      let completion;
      for (let i = 0; i < 5 && !completion; i++) {
        const [rec] = await sock.nextRecords(1, 10_000);
        const msg = JSON.parse(rec);
        if (msg.type === 3) completion = msg;
      }
      assert.deepEqual({ type: completion.type, invocationId: completion.invocationId, result: completion.result }, {
        type: 3,
        invocationId: '1',
        result: `v${version}`,
      });
    } finally {
      sock.close();
    }
  }
});

ptest('[raw ServerSentEvents] a MessagePack handshake over SSE is refused with {"error":…}', { needs: ['sse'] }, async () => {
  const n = await negotiate(base, '/testhub');
  const url = `${base}/testhub?id=${n.json.connectionToken}`;
  const sse = await openSse(url);
  try {
    assert.equal(sse.status, 200);
    const post = await request(url, { method: 'POST', body: `{"protocol":"messagepack","version":1}${RS}` });
    assert.ok(post.status >= 200 && post.status < 300, `POST handshake: ${post.status}`);
    const ev = await sse.nextEvent(10_000);
    assert.ok(ev, 'an SSE event with the handshake response');
    assert.ok(ev.data.endsWith(RS), JSON.stringify(ev.data));
    const resp = JSON.parse(ev.data.slice(0, -1));
    assert.equal(typeof resp.error, 'string', `expected a handshake error, got ${ev.data}`);
  } finally {
    sse.close();
  }
});

matrixTest('send() (no invocation id) of failing calls gets no reply and leaves the connection usable', {}, async (t, cell) => {
  // a Completion without invocationId would make the stock client drop the connection
  const conn = await connect(t, base, cell);
  await conn.send('ThrowException', 'An error occurred.');
  await conn.send('ThrowHubException', 'hub error');
  await conn.send('NotAMethod', 1);
  await conn.send('Echo'); // wrong argument count
  await conn.send('Echo', { not: 'a string' });
  await assertUsable(conn);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(conn.closeCount(), 0);
  await assertUsable(conn);
});
