// Hub-protocol parsing tolerance (protocol-notes §B.8–B.10), over raw WebSockets: message shapes
// that are valid by the protocol but that the stock JS client happens not to produce (property
// order, unknown properties, headers, wide integer encodings, stray stream items and cancels).
// The stock client cannot send these, so this file speaks the hub protocol directly.

import assert from 'node:assert/strict';
import { decode, encode } from '@msgpack/msgpack';
import { ptest } from './lib/pending.mjs';
import { useServer } from './lib/server.mjs';
import { RS, RawSocket, negotiate } from './lib/raw.mjs';
import { withTimeout } from './lib/util.mjs';

const server = await useServer(import.meta.url);
const base = server.url;

async function jsonSocket(t) {
  const n = await negotiate(base, '/testhub');
  const sock = await RawSocket.open(`${base}/testhub?id=${n.json.connectionToken}`);
  t.after(() => sock.close());
  sock.send(`{"protocol":"json","version":1}${RS}`);
  const [hs] = await sock.nextRecords(1);
  assert.equal(hs, '{}');
  return sock;
}

/** Reads JSON records until one satisfies pred (skipping pings); bounded. */
async function nextJson(sock, pred, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error('timed out waiting for a matching message');
    const [rec] = await sock.nextRecords(1, left);
    const msg = JSON.parse(rec);
    if (pred(msg)) return msg;
  }
}

ptest('[raw WebSockets/json] properties in any order, unknown properties and headers are accepted', {}, async (t) => {
  const sock = await jsonSocket(t);
  sock.send(`{"arguments":["ordered"],"extra":{"a":[1,{"b":null}]},"target":"Echo","invocationId":"1","type":1}${RS}`);
  const c1 = await nextJson(sock, (m) => m.type === 3 && m.invocationId === '1');
  assert.equal(c1.result, 'ordered');
  sock.send(`{"type":1,"headers":{"h1":"v1"},"invocationId":"2","target":"Echo","arguments":["with headers"]}${RS}`);
  const c2 = await nextJson(sock, (m) => m.type === 3 && m.invocationId === '2');
  assert.equal(c2.result, 'with headers');
});

ptest('[raw WebSockets/json] the handshake and the first invocation in one frame', {}, async (t) => {
  const n = await negotiate(base, '/testhub');
  const sock = await RawSocket.open(`${base}/testhub?id=${n.json.connectionToken}`);
  t.after(() => sock.close());
  sock.send(`{"protocol":"json","version":1}${RS}{"type":1,"invocationId":"7","target":"Echo","arguments":["same frame"]}${RS}`);
  const [hs] = await sock.nextRecords(1);
  assert.equal(hs, '{}');
  const c = await nextJson(sock, (m) => m.type === 3);
  assert.deepEqual([c.invocationId, c.result], ['7', 'same frame']);
});

ptest('[raw WebSockets/json] a void method completes with a Completion (no error); streams complete without result', {}, async (t) => {
  const sock = await jsonSocket(t);
  sock.send(`{"type":1,"invocationId":"1","target":"AddToGroup","arguments":["raw-group"]}${RS}`);
  const c = await nextJson(sock, (m) => m.type === 3 && m.invocationId === '1');
  assert.equal(c.error, undefined);
  sock.send(`{"type":4,"invocationId":"2","target":"Stream","arguments":[]}${RS}`);
  const items = [];
  const done = await nextJson(sock, (m) => {
    if (m.type === 2 && m.invocationId === '2') items.push(m.item);
    return m.type === 3 && m.invocationId === '2';
  });
  assert.deepEqual(items, ['a', 'b', 'c']);
  assert.equal(done.error, undefined);
  assert.ok(!('result' in done) || done.result === null, `stream completion carries no result: ${JSON.stringify(done)}`);
});

ptest('[raw WebSockets/json] stray StreamItem/Completion for unknown stream ids and CancelInvocation for unknown ids are ignored', {}, async (t) => {
  const sock = await jsonSocket(t);
  sock.send(`{"type":2,"invocationId":"999","item":"stray"}${RS}`);
  sock.send(`{"type":3,"invocationId":"998"}${RS}`);
  sock.send(`{"type":5,"invocationId":"997"}${RS}`);
  sock.send(`{"type":1,"invocationId":"1","target":"Echo","arguments":["still here"]}${RS}`);
  const c = await nextJson(sock, (m) => m.type === 3 && m.invocationId === '1');
  assert.equal(c.result, 'still here');
});

ptest('[raw WebSockets/json] cancelling a Counter stream ends it with a Completion without error', {}, async (t) => {
  const sock = await jsonSocket(t);
  sock.send(`{"type":4,"invocationId":"5","target":"Counter","arguments":[1000,20]}${RS}`);
  await nextJson(sock, (m) => m.type === 2 && m.invocationId === '5');
  sock.send(`{"type":5,"invocationId":"5"}${RS}`);
  const done = await nextJson(sock, (m) => m.type === 3 && m.invocationId === '5');
  assert.equal(done.error, undefined, `cancellation is not an error: ${JSON.stringify(done)}`);
});

// ---- MessagePack ----

function frame(arr) {
  const body = encode(arr);
  const prefix = [];
  let n = body.length;
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    prefix.push(b);
  } while (n);
  return Buffer.concat([Buffer.from(prefix), Buffer.from(body)]);
}

class MsgpackReader {
  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
  }
  async next(ms = 10_000) {
    const deadline = Date.now() + ms;
    for (;;) {
      // try to parse one message
      let len = 0;
      let shift = 0;
      let i = 0;
      let complete = false;
      while (i < this.buf.length && i < 5) {
        const b = this.buf[i++];
        len |= (b & 0x7f) << shift;
        shift += 7;
        if (!(b & 0x80)) {
          complete = true;
          break;
        }
      }
      if (complete && this.buf.length >= i + len) {
        const msg = decode(this.buf.subarray(i, i + len));
        this.buf = this.buf.subarray(i + len);
        return msg;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a MessagePack message');
      const m = await this.sock.next(left);
      if (!m) throw new Error('socket closed');
      this.buf = Buffer.concat([this.buf, typeof m.data === 'string' ? Buffer.from(m.data) : m.data]);
    }
  }
  async until(pred, ms = 10_000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = await this.next(Math.max(1, deadline - Date.now()));
      if (pred(m)) return m;
    }
  }
}

async function msgpackSocket(t) {
  const n = await negotiate(base, '/testhub');
  const sock = await RawSocket.open(`${base}/testhub?id=${n.json.connectionToken}`);
  t.after(() => sock.close());
  sock.send(`{"protocol":"messagepack","version":1}${RS}`);
  const first = await sock.next(10_000, 'handshake response');
  assert.ok(first, 'handshake response');
  const bytes = typeof first.data === 'string' ? Buffer.from(first.data) : first.data;
  const end = bytes.indexOf(0x1e);
  assert.equal(bytes.subarray(0, end).toString('latin1'), '{}');
  const reader = new MsgpackReader(sock);
  reader.buf = bytes.subarray(end + 1);
  return { sock, reader };
}

ptest('[raw WebSockets/msgpack] 5- and 6-item invocations, non-empty headers and wide integer encodings are accepted', {}, async (t) => {
  const { sock, reader } = await msgpackSocket(t);
  sock.send(frame([1, {}, '1', 'Echo', ['five items']]), { binary: true });
  sock.send(frame([1, { h: 'v' }, '2', 'Echo', ['six items'], []]), { binary: true });
  // type code as uint16 (0xcd 0x00 0x01): any int width must be accepted
  const wide = Buffer.concat([Buffer.from([0x95, 0xcd, 0x00, 0x01, 0x80]), Buffer.from(encode('3')), Buffer.from(encode('Echo')), Buffer.from(encode(['wide type']))]);
  sock.send(Buffer.concat([Buffer.from([wide.length]), wide]), { binary: true });
  const results = {};
  await withTimeout(
    (async () => {
      while (Object.keys(results).length < 3) {
        const m = await reader.until((x) => x[0] === 3);
        results[m[2]] = m;
      }
    })(),
    10_000,
    'three completions',
  );
  assert.deepEqual(results['1'].slice(3), [3, 'five items']);
  assert.deepEqual(results['2'].slice(3), [3, 'six items']);
  assert.deepEqual(results['3'].slice(3), [3, 'wide type']);
  for (const m of Object.values(results)) assert.ok(m[1] && typeof m[1] === 'object' && !Array.isArray(m[1]), 'headers are a map');
});

ptest('[raw WebSockets/msgpack] a void method completes with result kind 2 or a nil result (kind 3)', {}, async (t) => {
  const { sock, reader } = await msgpackSocket(t);
  sock.send(frame([1, {}, '1', 'AddToGroup', ['raw-mp-group']]), { binary: true });
  const m = await reader.until((x) => x[0] === 3 && x[2] === '1');
  assert.ok((m[3] === 2 && m.length === 4) || (m[3] === 3 && m[4] === null), `completion ${JSON.stringify(m)}`);
});
