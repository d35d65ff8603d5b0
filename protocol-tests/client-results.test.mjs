// Client results (contract §7): GET /clientresult/{connectionId} makes the server invoke the
// client method `Result` and relays the client's answer.

import assert from 'node:assert/strict';
import { useServer } from './lib/server.mjs';
import { connect, matrixTest } from './lib/matrix.mjs';
import { request } from './lib/raw.mjs';
import { sleep, uid } from './lib/util.mjs';

const server = await useServer(import.meta.url);
const base = server.url;
const N = { needs: ['client-results'] };

async function clientResult(conn) {
  const r = await request(`${base}/clientresult/${encodeURIComponent(conn.connectionId)}`, { timeout: 20_000 });
  assert.equal(r.status, 200, `status ${r.status}: ${r.text}`);
  assert.match(r.headers.get('content-type') ?? '', /^text\/plain/i, 'content-type');
  return r.text;
}

async function assertUsable(conn) {
  const v = uid('after');
  assert.equal(await conn.invoke('Echo', v), v);
}

matrixTest("a handler returning 10 → body '10'", N, async (t, cell) => {
  const conn = await connect(t, base, cell, { start: false });
  let calls = 0;
  conn.on('Result', (...args) => {
    calls++;
    assert.deepStrictEqual(args, []);
    return 10;
  });
  await conn.start();
  assert.equal(await clientResult(conn), '10');
  assert.equal(calls, 1);
  await assertUsable(conn);
});

matrixTest("an async handler resolving to 10 → body '10'", N, async (t, cell) => {
  const conn = await connect(t, base, cell, { start: false });
  conn.on('Result', async () => {
    await sleep(50);
    return 10;
  });
  await conn.start();
  assert.equal(await clientResult(conn), '10');
});

matrixTest("a throwing handler → body 'Error: from callback'", N, async (t, cell) => {
  const conn = await connect(t, base, cell, { start: false });
  conn.on('Result', () => {
    throw new Error('from callback');
  });
  await conn.start();
  assert.equal(await clientResult(conn), 'Error: from callback');
  await assertUsable(conn);
});

matrixTest("no handler → body \"Client didn't provide a result.\"", N, async (t, cell) => {
  const conn = await connect(t, base, cell);
  assert.equal(await clientResult(conn), "Client didn't provide a result.");
  await assertUsable(conn);
});

matrixTest('several client results in a row, concurrently with invocations', N, async (t, cell) => {
  const conn = await connect(t, base, cell, { start: false });
  let n = 0;
  conn.on('Result', () => {
    n++;
    return 10;
  });
  await conn.start();
  const echoes = Array.from({ length: 5 }, (_, i) => conn.invoke('Echo', `e${i}`));
  const results = await Promise.all([clientResult(conn), clientResult(conn), clientResult(conn)]);
  assert.deepStrictEqual(results, ['10', '10', '10']);
  assert.deepStrictEqual(await Promise.all(echoes), ['e0', 'e1', 'e2', 'e3', 'e4']);
  assert.equal(n, 3);
});
