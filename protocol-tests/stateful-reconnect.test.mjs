// Stateful reconnect [ext] (contract §3, protocol-notes §B.12): the stock client with
// withStatefulReconnect() over WebSockets, through a TCP proxy that cuts every live socket several
// times while traffic flows both ways. Nothing may be lost, duplicated or reordered, and the
// application must see no reconnecting/close and the same connection id.

import assert from 'node:assert/strict';
import { useServer } from './lib/server.mjs';
import { startProxy } from './lib/proxy.mjs';
import { CELLS, connect, matrixTest } from './lib/matrix.mjs';
import { collectStream, inbox, sleep, uid, withTimeout } from './lib/util.mjs';

const server = await useServer(import.meta.url);
const base = server.url;
const WS_CELLS = CELLS.filter((c) => c.transport === 'WebSockets');
const R = { needs: ['stateful-reconnect'], cells: WS_CELLS, timeout: 90_000 };

async function statefulConnection(t, cell, proxy) {
  const conn = await connect(t, proxy.url, cell, { stateful: true, record: true, start: false });
  const events = { reconnecting: 0, reconnected: 0 };
  conn.onreconnecting(() => events.reconnecting++);
  conn.onreconnected(() => events.reconnected++);
  const broadcast = inbox(conn, 'Broadcast');
  const group = inbox(conn, 'GroupMessage');
  await withTimeout(conn.start(), 15_000, 'start through the proxy');
  const [n] = conn.http.negotiations();
  assert.equal(n.useStatefulReconnect, true, 'negotiate must grant stateful reconnect on /testhub');
  return { conn, events, broadcast, group };
}

async function useProxy(t) {
  const proxy = await startProxy(base);
  t.after(() => proxy.close());
  return proxy;
}

matrixTest('a socket drop while idle is invisible: same connection id, no reconnecting/close', R, async (t, cell) => {
  const proxy = await useProxy(t);
  const { conn, events } = await statefulConnection(t, cell, proxy);
  const id = conn.connectionId;
  assert.equal(await conn.invoke('Echo', 'before'), 'before');
  const cut = proxy.cutAll();
  assert.ok(cut >= 1, 'the proxy had a live socket to cut');
  await sleep(300);
  const v = uid('after-drop');
  assert.equal(await withTimeout(conn.invoke('Echo', v), 15_000, 'Echo after the drop'), v);
  assert.equal(conn.connectionId, id);
  assert.equal(await conn.invoke('GetCallerConnectionId'), id);
  assert.deepEqual(events, { reconnecting: 0, reconnected: 0 });
  assert.equal(conn.closeCount(), 0);
  assert.ok(proxy.stats.accepted >= 2, 'the client opened a new socket');
});

matrixTest('group membership and the logical connection survive a drop', R, async (t, cell) => {
  const proxy = await useProxy(t);
  const { conn, group } = await statefulConnection(t, cell, proxy);
  const other = await connect(t, base, cell); // direct, not through the proxy
  const g = uid('group');
  await conn.invoke('AddToGroup', g);
  proxy.cutAll();
  const m = uid('group-after-drop');
  await other.invoke('SendToGroup', g, m); // may be sent while the socket is down: must be replayed
  await group.waitFor((gg, mm) => gg === g && mm === m, 15_000, 'group message after the drop');
  assert.equal(group.count((gg, mm) => mm === m), 1);
});

matrixTest('repeated drops under steady two-way traffic: every message exactly once, in order', R, async (t, cell) => {
  const proxy = await useProxy(t);
  const { conn, events, broadcast } = await statefulConnection(t, cell, proxy);
  const id = conn.connectionId;
  const tag = uid('seq');
  const TOTAL = 400;
  const CUTS = 5;

  // client→server: numbered sends (each echoed back by the server as Broadcast), every 10th an invoke
  const invokes = [];
  const sender = (async () => {
    for (let i = 0; i < TOTAL; i++) {
      const msg = `${tag}:${i}`;
      const p = conn.send('SendToCaller', msg);
      if (i % 10 === 0) invokes.push(conn.invoke('Echo', msg).then((r) => [msg, r]));
      await Promise.race([p, sleep(50)]); // backpressure is allowed to slow us down
      await sleep(5);
    }
  })();

  // server→client: back-to-back Counter streams
  const streams = [];
  let streaming = true;
  const streamer = (async () => {
    while (streaming && streams.length < 20) {
      const c = collectStream(conn.stream('Counter', 20, 10), 30_000, `Counter #${streams.length}`);
      streams.push(c);
      await c.done.catch(() => {});
    }
  })();

  // cut every live socket a few times while all that runs
  let socketsCut = 0;
  for (let k = 0; k < CUTS; k++) {
    await sleep(350);
    socketsCut += proxy.cutAll();
  }
  await withTimeout(sender, 60_000, 'all sends');
  streaming = false;
  await withTimeout(streamer, 60_000, 'the Counter streams');
  const last = `${tag}:${TOTAL - 1}`;
  await broadcast.waitFor((m) => m === last, 30_000, 'the last Broadcast').catch(() => {});
  const echoResults = await withTimeout(Promise.allSettled(invokes), 30_000, 'the Echo invocations');

  const got = broadcast.items.map(([m]) => m).filter((m) => typeof m === 'string' && m.startsWith(`${tag}:`));
  const seen = new Map();
  for (const m of got) seen.set(m, (seen.get(m) ?? 0) + 1);
  const expected = Array.from({ length: TOTAL }, (_, i) => `${tag}:${i}`);
  const lost = expected.filter((m) => !seen.has(m)).length;
  const duplicated = [...seen.values()].filter((n) => n > 1).reduce((a, n) => a + n - 1, 0);
  const inOrder = got.every((m, i) => i === 0 || Number(m.split(':').pop()) > Number(got[i - 1].split(':').pop()));
  const streamResults = await Promise.all(streams.map((s) => s.done.catch((e) => ({ items: s.items, error: e }))));
  const badStreams = streamResults.filter((r) => r.error || JSON.stringify(r.items) !== JSON.stringify([...Array(20).keys()]));
  const badEchoes = echoResults.filter((r) => r.status !== 'fulfilled' || r.value[0] !== r.value[1]);

  t.diagnostic(
    `sent=${TOTAL} cuts=${CUTS} socketsCut=${socketsCut} proxyAccepted=${proxy.stats.accepted} ` +
      `received=${got.length} lost=${lost} duplicated=${duplicated} inOrder=${inOrder} ` +
      `streams=${streamResults.length} badStreams=${badStreams.length} echoes=${echoResults.length} badEchoes=${badEchoes.length} ` +
      `reconnecting=${events.reconnecting} closes=${conn.closeCount()}`,
  );
  assert.ok(socketsCut >= CUTS, `each cut hit a live socket (${socketsCut})`);
  assert.equal(conn.closeCount(), 0, 'no onclose');
  assert.equal(events.reconnecting, 0, 'no onreconnecting');
  assert.equal(conn.connectionId, id, 'same connection id');
  assert.equal(lost, 0, 'lost messages');
  assert.equal(duplicated, 0, 'duplicated messages');
  assert.ok(inOrder, 'messages in order');
  assert.deepStrictEqual(got, expected);
  assert.equal(badStreams.length, 0, `Counter streams with wrong items/errors: ${JSON.stringify(badStreams.slice(0, 2).map((r) => r.error?.message ?? r.items))}`);
  assert.equal(badEchoes.length, 0, `failed Echo invocations: ${JSON.stringify(badEchoes.slice(0, 2).map((r) => r.reason?.message ?? r.value))}`);
  assert.equal(await conn.invoke('GetCallerConnectionId'), id);
});

matrixTest('without withStatefulReconnect a drop closes the connection (control)', { ...R, needs: [] }, async (t, cell) => {
  const proxy = await useProxy(t);
  const conn = await connect(t, proxy.url, cell);
  assert.equal(await conn.invoke('Echo', 'x'), 'x');
  proxy.cutAll();
  const err = await withTimeout(conn.closed, 10_000, 'onclose after the drop');
  assert.ok(err instanceof Error, 'closed with an error');
});
