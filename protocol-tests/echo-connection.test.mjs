// The raw `/echo` connection (contract §6): no handshake, no hub protocol; every payload comes back
// verbatim. Driven by the stock client's own connection layer (`HttpConnection`, which the package
// ships but does not re-export), plus raw HTTP for the wire details of SSE and long polling.

import assert from 'node:assert/strict';
import { HttpTransportType, TransferFormat } from '@microsoft/signalr';
import httpConnectionModule from '@microsoft/signalr/dist/cjs/HttpConnection.js';
import { CollectingLogger } from './lib/matrix.mjs';
import { ptest } from './lib/pending.mjs';
import { negotiate, openSse, request, RawSocket } from './lib/raw.mjs';
import { useServer } from './lib/server.mjs';
import { deferred, withTimeout } from './lib/util.mjs';

const { HttpConnection } = httpConnectionModule;
const server = await useServer(import.meta.url);
const base = server.url;

const CASES = [
  { transport: 'WebSockets', format: 'Text', needs: ['websockets'] },
  { transport: 'WebSockets', format: 'Binary', needs: ['websockets'] },
  { transport: 'ServerSentEvents', format: 'Text', needs: ['sse'] },
  { transport: 'LongPolling', format: 'Text', needs: ['longpolling'] },
  { transport: 'LongPolling', format: 'Binary', needs: ['longpolling'] },
];

async function openEcho(t, c) {
  const logger = new CollectingLogger(undefined, `echo ${c.transport}/${c.format}`);
  const conn = new HttpConnection(`${base}/echo`, { transport: HttpTransportType[c.transport], logger });
  const received = [];
  let waiter = null;
  conn.onreceive = (data) => {
    received.push(data);
    if (waiter) waiter();
  };
  const closed = deferred();
  conn.onclose = (e) => closed.resolve(e);
  t.after(() => withTimeout(conn.stop(), 10_000, 'echo stop').catch(() => {}));
  await withTimeout(conn.start(TransferFormat[c.format]), 15_000, 'HttpConnection.start');
  return {
    conn,
    closed: closed.promise,
    received,
    /** Sends `payload` and resolves with what came back (concatenated until `size` units arrived). */
    async roundTrip(payload) {
      received.length = 0;
      const binary = typeof payload !== 'string';
      const want = binary ? payload.byteLength : payload.length;
      const got = () =>
        binary
          ? received.reduce((n, d) => n + d.byteLength, 0)
          : received.reduce((n, d) => n + d.length, 0);
      await conn.send(payload);
      await withTimeout(
        new Promise((resolve) => {
          waiter = () => got() >= want && resolve();
          waiter();
        }),
        10_000,
        'the echo',
      );
      waiter = null;
      if (binary) {
        for (const d of received) assert.ok(d instanceof ArrayBuffer, `binary payload must come back as binary, got ${typeof d}`);
        return Buffer.concat(received.map((d) => Buffer.from(d)));
      }
      for (const d of received) assert.equal(typeof d, 'string', 'text payload must come back as text');
      return received.join('');
    },
  };
}

for (const c of CASES) {
  const label = `[${c.transport}/${c.format}]`;
  ptest(`${label} /echo via the stock HttpConnection echoes payloads verbatim`, { needs: c.needs }, async (t) => {
    const e = await openEcho(t, c);
    if (c.format === 'Text') {
      for (const s of ['hello', '你好，世界！ 😀', 'line1\nline2\n\nline4', 'trailing newline\n', '{"json":true}\u001e', 'z'.repeat(20_000)]) {
        assert.equal(await e.roundTrip(s), s, `payload ${JSON.stringify(s.slice(0, 40))}`);
      }
    } else {
      const bytes = new Uint8Array(256).map((_, i) => i);
      const back = await e.roundTrip(bytes.buffer.slice(0));
      assert.deepStrictEqual([...back], [...bytes]);
      const big = new Uint8Array(20_000).map((_, i) => (i * 7) & 0xff);
      assert.deepStrictEqual([...(await e.roundTrip(big.buffer.slice(0)))], [...big]);
    }
    await withTimeout(e.conn.stop(), 10_000, 'stop');
    assert.equal(await withTimeout(e.closed, 5_000, 'onclose'), undefined, 'clean close');
  });
}

// ---- raw wire checks ----

ptest('[raw WebSockets] /echo: text frames come back as text, binary frames as binary', { needs: ['websockets'] }, async (t) => {
  const n = await negotiate(base, '/echo');
  assert.equal(n.status, 200);
  const sock = await RawSocket.open(`${base}/echo?id=${n.json.connectionToken}`);
  t.after(() => sock.close());
  sock.send('text frame\nwith newline');
  const m1 = await sock.next(10_000);
  assert.deepStrictEqual(m1, { data: 'text frame\nwith newline', isBinary: false });
  sock.send(Buffer.from([0, 1, 2, 255]), { binary: true });
  const m2 = await sock.next(10_000);
  assert.equal(m2.isBinary, true);
  assert.deepStrictEqual([...m2.data], [0, 1, 2, 255]);
});

ptest('[raw ServerSentEvents] /echo: text/event-stream; a payload with newlines becomes data: lines and arrives intact', { needs: ['sse'] }, async () => {
  const n = await negotiate(base, '/echo');
  const url = `${base}/echo?id=${n.json.connectionToken}`;
  const sse = await openSse(url);
  try {
    assert.equal(sse.status, 200);
    assert.match(sse.headers.get('content-type') ?? '', /^text\/event-stream/i);
    const payload = 'first line\nsecond line\n\nfourth line';
    const post = await request(url, { method: 'POST', body: payload, headers: { 'Content-Type': 'text/plain;charset=UTF-8' } });
    assert.equal(post.status, 200, `POST ${post.status}`);
    const ev = await sse.nextEvent(10_000);
    assert.ok(ev, 'an event');
    assert.equal(ev.data, payload);
    const raw = sse.rawText();
    for (const line of ['data: first line', 'data: second line', 'data: fourth line']) {
      assert.ok(raw.includes(line), `raw stream must contain ${JSON.stringify(line)}: ${JSON.stringify(raw)}`);
    }
    const post2 = await request(url, { method: 'POST', body: 'unicode 你好' });
    assert.equal(post2.status, 200);
    assert.equal((await sse.nextEvent(10_000)).data, 'unicode 你好');
  } finally {
    sse.close();
  }
});

ptest('[raw LongPolling] /echo: first poll 200 at once, data round-trips, DELETE ends the pending poll with 204', { needs: ['longpolling'] }, async () => {
  const n = await negotiate(base, '/echo');
  const url = `${base}/echo?id=${n.json.connectionToken}`;
  const t0 = Date.now();
  const first = await request(url, { timeout: 5_000 });
  assert.equal(first.status, 200, 'first poll');
  assert.equal(first.text, '', 'first poll is empty');
  assert.ok(Date.now() - t0 < 3_000, 'first poll returns at once');

  const post = await request(url, { method: 'POST', body: 'text payload' });
  assert.equal(post.status, 200);
  const poll = await request(url, { timeout: 10_000 });
  assert.equal(poll.status, 200);
  assert.equal(poll.text, 'text payload');

  const bytes = Buffer.from([9, 8, 7, 0, 255]);
  const postB = await request(url, { method: 'POST', body: bytes, headers: { 'Content-Type': 'application/octet-stream' } });
  assert.equal(postB.status, 200);
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 10_000);
  const res = await fetch(url, { signal: ac.signal });
  const body = Buffer.from(await res.arrayBuffer());
  clearTimeout(timer);
  assert.equal(res.status, 200);
  assert.deepStrictEqual([...body], [...bytes]);

  // a pending poll ends with 204 when the connection is deleted
  const pending = request(url, { timeout: 15_000 });
  await new Promise((r) => setTimeout(r, 200));
  const del = await request(url, { method: 'DELETE' });
  assert.ok(del.status >= 200 && del.status < 300, `DELETE: ${del.status}`);
  const ended = await pending;
  assert.equal(ended.status, 204, 'the outstanding poll ends with 204');
});
