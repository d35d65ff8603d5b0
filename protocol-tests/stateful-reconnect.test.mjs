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
  const direct = inbox(conn, 'Direct');
  await withTimeout(conn.start(), 15_000, 'start through the proxy');
  const [n] = conn.http.negotiations();
  assert.equal(n.useStatefulReconnect, true, 'negotiate must grant stateful reconnect on /testhub');
  return { conn, events, broadcast, group, direct };
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
    const upgrades = proxy.stats.upgrades;
    socketsCut += proxy.cutAll();
    await proxy.waitForUpgrades(upgrades + 1); // the client's single resume attempt got through
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

matrixTest('a reconnect that takes 5 s still resumes the same connection; messages sent meanwhile are replayed', R, async (t, cell) => {
  const proxy = await useProxy(t);
  const { conn, events, direct } = await statefulConnection(t, cell, proxy);
  const other = await connect(t, base, cell); // direct, not through the proxy
  const id = conn.connectionId;
  proxy.holdNewConnections(5_000);
  proxy.cutAll();
  await sleep(200);
  const sent = [];
  for (let i = 0; i < 5; i++) {
    const m = uid(`while-away-${i}`);
    sent.push(m);
    await other.invoke('SendToConnection', id, m);
  }
  const pending = conn.invoke('Echo', 'queued while away'); // buffered by the client, replayed on resume
  for (const m of sent) await direct.waitFor((x) => x === m, 20_000, `Direct(${m}) after the slow reconnect`);
  assert.equal(await withTimeout(pending, 20_000, 'the queued Echo'), 'queued while away');
  assert.deepStrictEqual(direct.items.map(([m]) => m), sent, 'all, once, in order');
  assert.equal(conn.connectionId, id);
  assert.equal(await conn.invoke('GetCallerConnectionId'), id);
  assert.deepEqual(events, { reconnecting: 0, reconnected: 0 });
  assert.equal(conn.closeCount(), 0);
});

matrixTest('two drops in quick succession (the second during the resume) lose nothing', R, async (t, cell) => {
  const proxy = await useProxy(t);
  const { conn, events, broadcast } = await statefulConnection(t, cell, proxy);
  const tag = uid('double');
  const sends = [];
  for (let i = 0; i < 20; i++) sends.push(conn.send('SendToCaller', `${tag}:${i}`));
  const upgrades = proxy.stats.upgrades;
  proxy.cutAll();
  for (let i = 20; i < 40; i++) sends.push(conn.send('SendToCaller', `${tag}:${i}`));
  // cut again right after the resumed socket's 101, i.e. while Sequence/replay is under way
  // (a cut before the 101 would fail the client's single reconnect attempt by design)
  await proxy.waitForUpgrades(upgrades + 1);
  proxy.cutAll();
  for (let i = 40; i < 60; i++) sends.push(conn.send('SendToCaller', `${tag}:${i}`));
  await withTimeout(Promise.all(sends), 20_000, 'the sends');
  await broadcast.waitFor((m) => m === `${tag}:59`, 20_000, 'the last Broadcast').catch(() => {});
  const got = broadcast.items.map(([m]) => m).filter((m) => m.startsWith(`${tag}:`));
  t.diagnostic(`sent=60 received=${got.length} proxyAccepted=${proxy.stats.accepted} socketsCut=${proxy.stats.socketsCut}`);
  assert.deepStrictEqual(got, Array.from({ length: 60 }, (_, i) => `${tag}:${i}`));
  assert.equal(conn.closeCount(), 0);
  assert.equal(events.reconnecting, 0);
});

matrixTest('a burst of more than 100 000 bytes server→client (no drop) waits for Acks instead of closing', R, async (t, cell) => {
  const proxy = await useProxy(t);
  const { conn, events, direct } = await statefulConnection(t, cell, proxy);
  const other = await connect(t, base, cell); // a plain connection produces the burst
  const tag = uid('burst');
  const N = 60;
  const pad = 'b'.repeat(5_000); // ~300 KB to the stateful client, faster than its 1 s Ack cadence
  await withTimeout(
    Promise.all(Array.from({ length: N }, (_, i) => other.send('SendToConnection', conn.connectionId, `${tag}:${i}:${pad}`))),
    20_000,
    'the burst sends',
  );
  await direct.waitFor((m) => m.startsWith(`${tag}:${N - 1}:`), 20_000, 'the last Direct message').catch(() => {});
  const got = direct.items.map(([m]) => m).filter((m) => m.startsWith(`${tag}:`));
  t.diagnostic(`sent=${N} bytesEach=${pad.length} received=${got.length} closes=${conn.closeCount()}`);
  assert.equal(conn.closeCount(), 0, 'the server must apply backpressure (wait for Acks), not close the connection');
  assert.deepStrictEqual(got.map((m) => Number(m.split(':')[1])), Array.from({ length: N }, (_, i) => i));
  assert.equal(events.reconnecting, 0);
});

matrixTest('more than 100 000 unacknowledged bytes across drops: the server acks, nothing blocks or is lost', R, async (t, cell) => {
  const proxy = await useProxy(t);
  const { conn, events, broadcast } = await statefulConnection(t, cell, proxy);
  const tag = uid('big');
  const N = 120;
  const pad = 'p'.repeat(4_000); // ~480 KB client→server and back, well over the 100 000-byte buffer
  const sender = (async () => {
    for (let i = 0; i < N; i++) {
      await conn.send('SendToCaller', `${tag}:${i}:${pad}`); // resolves only under the buffer limit
    }
  })();
  for (let k = 0; k < 3; k++) {
    await sleep(250);
    const upgrades = proxy.stats.upgrades;
    proxy.cutAll();
    await proxy.waitForUpgrades(upgrades + 1);
  }
  await withTimeout(sender, 45_000, 'the sends (a server that never sends Ack blocks the client here)');
  // server→client large results across one more drop
  const big = conn.invoke('GenerateString', 200_000);
  proxy.cutAll();
  assert.equal((await withTimeout(big, 20_000, 'GenerateString across a drop')).length, 200_000);
  await broadcast.waitFor((m) => m.startsWith(`${tag}:${N - 1}:`), 20_000, 'the last Broadcast').catch(() => {});
  const got = broadcast.items.map(([m]) => m).filter((m) => m.startsWith(`${tag}:`));
  const idx = got.map((m) => Number(m.split(':')[1]));
  t.diagnostic(`sent=${N} bytesEach=${pad.length} received=${got.length} socketsCut=${proxy.stats.socketsCut}`);
  assert.deepStrictEqual(idx, Array.from({ length: N }, (_, i) => i));
  assert.ok(got.every((m) => m.endsWith(pad)), 'payloads intact');
  assert.equal(conn.closeCount(), 0);
  assert.equal(events.reconnecting, 0);
});

matrixTest(
  'withStatefulReconnect() on a non-WebSocket transport: granted at negotiate, the connection works normally (handshake v1)',
  { needs: ['stateful-reconnect'], cells: CELLS.filter((c) => c.transport !== 'WebSockets') },
  async (t, cell) => {
    const conn = await connect(t, base, cell, { stateful: true, record: true, start: false });
    const broadcast = inbox(conn, 'Broadcast');
    await withTimeout(conn.start(), 15_000, 'start');
    assert.equal(conn.http.negotiations()[0].useStatefulReconnect, true);
    const tag = uid('nonws');
    for (let i = 0; i < 30; i++) await conn.send('SendToCaller', `${tag}:${i}:${'n'.repeat(5_000)}`);
    await broadcast.waitFor((m) => m.startsWith(`${tag}:29:`), 15_000, 'the last Broadcast');
    assert.equal(broadcast.items.length, 30);
    assert.equal(await conn.invoke('Echo', 'ok'), 'ok');
    assert.equal(conn.closeCount(), 0);
  },
);

matrixTest('without withStatefulReconnect a drop closes the connection (control)', { ...R, needs: [] }, async (t, cell) => {
  const proxy = await useProxy(t);
  const conn = await connect(t, proxy.url, cell);
  assert.equal(await conn.invoke('Echo', 'x'), 'x');
  proxy.cutAll();
  const err = await withTimeout(conn.closed, 10_000, 'onclose after the drop');
  assert.ok(err instanceof Error, 'closed with an error');
});
