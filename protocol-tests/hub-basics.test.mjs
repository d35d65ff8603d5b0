// TestHub basics (contract §2, §3) over every transport x protocol cell, with the stock client.

import assert from 'node:assert/strict';
import { getUserAgentHeaderSafe } from './lib/ua.mjs';
import { useServer } from './lib/server.mjs';
import { NO_WS_CELLS, connect, isMsgpack, matrixTest } from './lib/matrix.mjs';
import { inbox, uid, withTimeout } from './lib/util.mjs';

const server = await useServer(import.meta.url);
const base = server.url;

matrixTest('Echo returns its argument (ascii)', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  assert.equal(await conn.invoke('Echo', 'Hello world'), 'Hello world');
});

matrixTest('Echo preserves unicode (你好，世界！ and non-BMP)', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  assert.equal(await conn.invoke('Echo', '你好，世界！'), '你好，世界！');
  const s = 'emoji 😀 Ω é \u00a0 \u2028 \u2029';
  assert.equal(await conn.invoke('Echo', s), s);
});

matrixTest('Echo of the empty string', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  assert.equal(await conn.invoke('Echo', ''), '');
});

matrixTest('control characters (U+001E, U+0000, CR, LF, quotes) round-trip through Echo', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const s = 'a\u001eb\u001e\u0000c\r\nd\ne\tf"g\\h\u0001\u001f\u007f';
  assert.equal(await conn.invoke('Echo', s), s);
  assert.equal(await conn.invoke('Echo', '\u001e'), '\u001e');
});

matrixTest('hub method names are case-insensitive (echo, ECHO)', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  assert.equal(await conn.invoke('echo', 'lower'), 'lower');
  assert.equal(await conn.invoke('ECHO', 'upper'), 'upper');
});

matrixTest('GetCallerConnectionId equals connection.connectionId', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const id = await conn.invoke('GetCallerConnectionId');
  assert.equal(typeof id, 'string');
  assert.ok(conn.connectionId, 'client has a connectionId');
  assert.equal(id, conn.connectionId);
});

matrixTest('GetActiveTransportName returns the exact transport name', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  assert.equal(await conn.invoke('GetActiveTransportName'), cell.transport);
});

matrixTest('InvokeWithString sends Message(message) to the caller, then completes without result', {}, async (t, cell) => {
  const conn = await connect(t, base, cell, { start: false });
  const box = inbox(conn, 'Message');
  await conn.start();
  const msg = uid('msg');
  const result = await conn.invoke('InvokeWithString', msg);
  assert.equal(result ?? null, null, 'completes without result');
  const [got] = await box.waitFor((m) => m === msg, 10_000);
  assert.equal(got, msg);
  assert.equal(box.items.length, 1);
});

matrixTest('client method names are matched case-insensitively by the client (handler "message")', {}, async (t, cell) => {
  const conn = await connect(t, base, cell, { start: false });
  const box = inbox(conn, 'message');
  await conn.start();
  const msg = uid('lower');
  await conn.invoke('InvokeWithString', msg);
  await box.waitFor((m) => m === msg, 10_000);
});

matrixTest('SendCustomObject sends CustomObject({Name, Value}) unchanged', {}, async (t, cell) => {
  const conn = await connect(t, base, cell, { start: false });
  const box = inbox(conn, 'CustomObject');
  await conn.start();
  const obj = { Name: uid('name'), Value: 42 };
  await conn.invoke('SendCustomObject', obj);
  const [got] = await box.waitFor((o) => o && o.Name === obj.Name, 10_000);
  assert.deepStrictEqual(got, obj);
});

function complexInput(cell) {
  if (isMsgpack(cell)) {
    return {
      String: 'complex ✓',
      IntArray: [1, -2, 3, 0, 2147483647, -2147483648],
      ByteArray: new Uint8Array([0, 1, 2, 3, 254, 255]),
      Guid: 'f0e1d2c3-b4a5-9687-7869-5a4b3c2d1e0f',
      DateTime: new Date(Date.UTC(2002, 3, 1, 10, 20, 15, 123)),
    };
  }
  return {
    String: 'complex ✓',
    IntArray: [1, -2, 3, 0, 2147483647, -2147483648],
    ByteArray: 'AAECA/7/',
    Guid: 'f0e1d2c3-b4a5-9687-7869-5a4b3c2d1e0f',
    DateTime: '2002-04-01T10:20:15Z',
  };
}

matrixTest('EchoComplexObject round-trips exactly (bytes, timestamp, ints, guid)', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const input = complexInput(cell);
  const out = await conn.invoke('EchoComplexObject', input);
  if (isMsgpack(cell)) {
    assert.ok(out.ByteArray instanceof Uint8Array, `ByteArray must decode as bytes (bin), got ${typeof out.ByteArray}`);
    assert.deepStrictEqual([...out.ByteArray], [...input.ByteArray]);
    assert.ok(out.DateTime instanceof Date, `DateTime must decode as a Date (timestamp ext), got ${typeof out.DateTime}`);
    assert.equal(out.DateTime.getTime(), input.DateTime.getTime());
    assert.deepStrictEqual(
      { ...out, ByteArray: [...out.ByteArray], DateTime: out.DateTime.toISOString() },
      { ...input, ByteArray: [...input.ByteArray], DateTime: input.DateTime.toISOString() },
    );
  } else {
    assert.deepStrictEqual(out, input);
  }
});

matrixTest('SendComplexObject returns the fixed ComplexObject', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const out = await conn.invoke('SendComplexObject');
  if (isMsgpack(cell)) {
    assert.ok(out.ByteArray instanceof Uint8Array, 'ByteArray is bin');
    assert.ok(out.DateTime instanceof Date, 'DateTime is a timestamp');
    assert.deepStrictEqual(
      { ...out, ByteArray: [...out.ByteArray], DateTime: out.DateTime.toISOString() },
      {
        String: 'hello world',
        IntArray: [1, 2, 3],
        ByteArray: [1, 2, 3],
        Guid: '00010203-0405-0607-0706-050403020100',
        DateTime: '2000-01-01T00:00:00.000Z',
      },
    );
  } else {
    assert.deepStrictEqual(out, {
      String: 'hello world',
      IntArray: [1, 2, 3],
      ByteArray: 'AQID',
      Guid: '00010203-0405-0607-0706-050403020100',
      DateTime: '2000-01-01T00:00:00Z',
    });
  }
});

matrixTest('GetHeader sees User-Agent and custom headers (case-insensitive name), null when absent', {}, async (t, cell) => {
  const custom = uid('hdr');
  const conn = await connect(t, base, cell, { headers: { 'X-Tidings-Test': custom } });
  const [, ua] = getUserAgentHeaderSafe();
  assert.equal(await conn.invoke('GetHeader', 'User-Agent'), ua);
  assert.equal(await conn.invoke('GetHeader', 'user-agent'), ua);
  assert.equal(await conn.invoke('GetHeader', 'X-Tidings-Test'), custom);
  assert.equal(await conn.invoke('GetHeader', 'x-tidings-test'), custom);
  assert.equal(await conn.invoke('GetHeader', 'X-Not-Sent-' + uid()), null);
});

matrixTest('GetCookie sees the negotiate cookies (testCookie, testCookie2), not the expired one', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  assert.equal(await conn.invoke('GetCookie', 'testCookie'), 'testValue');
  assert.equal(await conn.invoke('GetCookie', 'testCookie2'), 'testValue2');
  assert.equal(await conn.invoke('GetCookie', 'expiredCookie'), null);
  assert.equal(await conn.invoke('GetCookie', 'noSuchCookie'), null);
});

matrixTest('GetContentTypeHeader is callable (string or null)', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const v = await conn.invoke('GetContentTypeHeader');
  assert.ok(v === null || typeof v === 'string', `got ${JSON.stringify(v)}`);
});

matrixTest('GenerateString(100000) and GenerateString(1000000): server→client has no size limit', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  for (const n of [100_000, 1_000_000]) {
    const s = await withTimeout(conn.invoke('GenerateString', n), 30_000, `GenerateString(${n})`);
    assert.equal(typeof s, 'string');
    assert.equal(s.length, n);
    assert.ok(/^x*$/.test(s), 'only x');
  }
  assert.equal(await conn.invoke('Echo', 'after'), 'after');
});

matrixTest('Echo of a 32 600-char string (a message just below the 32 KiB receive limit) works', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const s = 'y'.repeat(32_600);
  assert.equal(await conn.invoke('Echo', s), s);
});

matrixTest('the 32 KiB limit is per message: three 20 000-char Echoes sent at once (batched by the client) all work', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const inputs = ['a', 'b', 'c'].map((ch) => ch.repeat(20_000));
  const outs = await withTimeout(Promise.all(inputs.map((s) => conn.invoke('Echo', s))), 20_000, 'three large echoes');
  assert.deepStrictEqual(outs, inputs);
  assert.equal(conn.closeCount(), 0);
});

matrixTest('send() (no completion) runs the method: SendToCaller → Broadcast', {}, async (t, cell) => {
  const conn = await connect(t, base, cell, { start: false });
  const box = inbox(conn, 'Broadcast');
  await conn.start();
  const msg = uid('send');
  await conn.send('SendToCaller', msg);
  await box.waitFor((m) => m === msg, 10_000);
});

matrixTest('100 concurrent invocations (batched by the client) all complete correctly', {}, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const inputs = Array.from({ length: 100 }, (_, i) => `item-${i}-${'z'.repeat(i * 7)}`);
  const outs = await withTimeout(Promise.all(inputs.map((s) => conn.invoke('Echo', s))), 30_000, '100 echoes');
  assert.deepStrictEqual(outs, inputs);
});

matrixTest('sends and invokes interleave in order (send ×50 then invoke)', {}, async (t, cell) => {
  const conn = await connect(t, base, cell, { start: false });
  const box = inbox(conn, 'Broadcast');
  await conn.start();
  const tag = uid('order');
  const sends = [];
  for (let i = 0; i < 50; i++) sends.push(conn.send('SendToCaller', `${tag}:${i}`));
  await Promise.all(sends);
  assert.equal(await conn.invoke('Echo', 'barrier'), 'barrier');
  await box.waitFor((m) => m === `${tag}:49`, 10_000);
  const got = box.items.map(([m]) => m).filter((m) => m.startsWith(tag));
  assert.deepStrictEqual(got, Array.from({ length: 50 }, (_, i) => `${tag}:${i}`));
});

// The same TestHub on the other paths.
matrixTest('Echo and GetActiveTransportName work on /testhub-nodetails', {}, async (t, cell) => {
  const conn = await connect(t, base, cell, { path: '/testhub-nodetails' });
  assert.equal(await conn.invoke('Echo', 'nodetails'), 'nodetails');
  assert.equal(await conn.invoke('GetActiveTransportName'), cell.transport);
});

matrixTest('Echo and GetActiveTransportName work on /testhub-nowebsockets', { cells: NO_WS_CELLS }, async (t, cell) => {
  const conn = await connect(t, base, cell, { path: '/testhub-nowebsockets' });
  assert.equal(await conn.invoke('Echo', 'nowebsockets'), 'nowebsockets');
  assert.equal(await conn.invoke('GetActiveTransportName'), cell.transport);
});

matrixTest('30 connections of this cell at once: each Echo and GetCallerConnectionId answers its own connection', {}, async (t, cell) => {
  const conns = await withTimeout(Promise.all(Array.from({ length: 30 }, () => connect(t, base, cell))), 30_000, '30 connections');
  const ids = new Set(conns.map((c) => c.connectionId));
  assert.equal(ids.size, 30, 'distinct connection ids');
  await withTimeout(
    Promise.all(
      conns.map(async (c, i) => {
        assert.equal(await c.invoke('Echo', `conn-${i}`), `conn-${i}`);
        assert.equal(await c.invoke('GetCallerConnectionId'), c.connectionId);
      }),
    ),
    30_000,
    'all answers',
  );
});

matrixTest('a large client batch (400 queued 5 000-char sends ≈ 2 MB in one frame/POST, each message under 32 KiB) is accepted', {}, async (t, cell) => {
  const conn = await connect(t, base, cell, { start: false });
  const box = inbox(conn, 'Broadcast');
  await conn.start();
  const tag = uid('batch');
  const pad = 'w'.repeat(5_000);
  const N = 400;
  // all queued at once: the stock client concatenates them into as few sends as it can
  const sent = await withTimeout(
    Promise.allSettled(Array.from({ length: N }, (_, i) => conn.send('SendToCaller', `${tag}:${i}:${pad}`))),
    30_000,
    'the queued sends',
  );
  const failed = sent.filter((r) => r.status === 'rejected');
  assert.equal(failed.length, 0, `sends rejected: ${failed[0]?.reason?.message}`);
  await box.waitFor((m) => m.startsWith(`${tag}:${N - 1}:`), 20_000, 'the last Broadcast').catch(() => {});
  const closeErr = conn.closeCount() ? await conn.closed : null;
  assert.equal(conn.closeCount(), 0, `connection closed: ${closeErr?.message}`);
  const got = box.items.map(([m]) => m).filter((m) => m.startsWith(`${tag}:`));
  assert.equal(got.length, N, 'every message handled once');
  assert.equal(await conn.invoke('Echo', 'after batch'), 'after batch');
});
