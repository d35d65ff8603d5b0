// Scale-out over Redis [ext] (contract §0 `--redis`): three testhub processes share one
// redis-server; stock clients on different nodes check every fan-out target, group changes for
// connections on other nodes, client results routed back, presence; then faults: Redis SIGKILLed
// during a steady broadcast and restarted (with AOF: every message exactly once, in order; without
// persistence: the loss is detected and reported), and a node SIGKILLed mid-run.
//
// Needs `redis-server` (PATH or REDIS_SERVER). Without it the file is skipped, except with CI=true,
// where it fails: scripts/redis-tests.sh installs it.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import { testhubBinary } from './lib/server.mjs';
import { CELLS, WS_JSON, WS_MSGPACK, LP_JSON, SSE_JSON, connect } from './lib/matrix.mjs';
import { inbox, sleep, uid, withTimeout } from './lib/util.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const logDir = path.resolve(here, '..', 'target', 'protocol-tests-logs');
mkdirSync(logDir, { recursive: true });
const WAIT = 10_000;

function findRedis() {
  const candidates = [process.env.REDIS_SERVER, 'redis-server', '/usr/bin/redis-server', '/usr/local/bin/redis-server'];
  for (const c of candidates.filter(Boolean)) {
    const r = spawnSync(c, ['--version'], { encoding: 'utf8' });
    if (r.status === 0) return c;
  }
  return null;
}

const REDIS = findRedis();
if (!REDIS && process.env.CI === 'true') {
  throw new Error('redis-server not found and CI=true: scale-out tests cannot run (run scripts/redis-tests.sh, which installs it)');
}
const suite = REDIS ? describe : describe.skip;

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Sends one inline command to Redis; resolves with the first reply line. */
function redisCommand(port, line, ms = 1000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('redis command timed out'));
    }, ms);
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('connect', () => sock.write(`${line}\r\n`));
    sock.on('data', (d) => {
      buf += d.toString();
      if (buf.includes('\r\n')) {
        clearTimeout(timer);
        sock.destroy();
        resolve(buf.split('\r\n')[0]);
      }
    });
  });
}

/** A redis-server on a free port (or `port`), in its own directory. `aof`: appendfsync always. */
async function startRedis({ port, dir, aof = false, name = 'redis' } = {}) {
  port ??= await freePort();
  dir ??= mkdtempSync(path.join(os.tmpdir(), 'tidings-redis-'));
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--protected-mode', 'no'];
  args.push(...(aof ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']));
  const log = createWriteStream(path.join(logDir, `scaleout-${name}.log`), { flags: 'a' });
  const child = spawn(REDIS, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  let exited = false;
  child.on('exit', () => (exited = true));
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exited) throw new Error(`redis-server exited at start (log: ${log.path})`);
    try {
      if ((await redisCommand(port, 'PING')) === '+PONG') break;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) throw new Error(`redis-server did not answer PING within 10 s (log: ${log.path})`);
    await sleep(50);
  }
  return {
    port,
    dir,
    url: `redis://127.0.0.1:${port}`,
    child,
    kill(signal = 'SIGKILL') {
      return new Promise((resolve) => {
        if (exited) return resolve();
        child.on('exit', () => resolve());
        child.kill(signal);
      });
    },
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One testhub process joined to `redisUrl`. */
async function startNode(name, redisUrl) {
  const log = createWriteStream(path.join(logDir, `scaleout-${name}.log`));
  const child = spawn(testhubBinary(), ['--listen', '127.0.0.1:0', '--redis', redisUrl], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { RUST_LOG: 'info', ...process.env },
  });
  child.stderr.pipe(log, { end: false });
  let exit = null;
  const exited = new Promise((resolve) =>
    child.on('exit', (code, signal) => {
      exit = { code, signal };
      resolve(exit);
    }),
  );
  const url = await withTimeout(
    new Promise((resolve, reject) => {
      let buf = '';
      child.on('error', reject);
      exited.then(() => reject(new Error(`node ${name} exited before listening (log: ${log.path})`)));
      child.stdout.on('data', (d) => {
        log.write(d);
        buf += d.toString();
        const m = /^listening on (http:\/\/\S+)\s*$/m.exec(buf);
        if (m) resolve(m[1]);
      });
    }),
    60_000,
    `node ${name} to listen`,
  );
  return {
    name,
    url,
    logPath: log.path,
    alive: () => exit === null,
    exited,
    async stats() {
      const r = await fetch(`${url}/backplane`);
      return (await r.json()).hubs;
    },
    async stop(signal = 'SIGTERM') {
      if (exit) return exit;
      child.kill(signal);
      const r = await Promise.race([exited, sleep(10_000).then(() => null)]);
      if (r === null) {
        child.kill('SIGKILL');
        await exited;
      }
      return exit;
    },
  };
}

/** Starts `n` nodes on one Redis; the `after` hook checks none died unexpectedly. */
async function cluster(redis, n, tag) {
  const nodes = [];
  for (let i = 0; i < n; i++) nodes.push(await startNode(`${tag}-${String.fromCharCode(97 + i)}`, redis.url));
  return nodes;
}

async function stopAll(nodes, { expectAlive = true } = {}) {
  const dead = nodes.filter((n) => !n.alive() && !n.killed);
  await Promise.all(nodes.map((n) => n.stop()));
  if (expectAlive && dead.length) {
    throw new Error(`node(s) died during the test: ${dead.map((d) => `${d.name} (log: ${d.logPath})`).join(', ')}`);
  }
}

/** A client of `/scaleout` on `node` as `user`, with an inbox of `Msg(kind, text)`. */
async function member(t, node, cell, user) {
  const q = user ? `?user=${encodeURIComponent(user)}` : '';
  const conn = await connect(t, node.url, cell, { url: `${node.url}/scaleout${q}`, start: false });
  const box = inbox(conn, 'Msg');
  conn.on('Result', () => 42);
  await conn.start();
  const [id, u] = await conn.invoke('Whoami');
  assert.equal(u ?? null, user ?? null);
  const who = `${cell.name}@${node.name}${user ? `(${user})` : ''}`;
  return {
    conn,
    id,
    who,
    box,
    expect: (kind, text) => box.waitFor((k, m) => k === kind && m === text, WAIT, `${who}: Msg(${kind}, ${text})`),
    saw: (kind, text) => box.count((k, m) => k === kind && m === text),
  };
}

/**
 * Proves absence on other nodes: every node's messages to a connection are ordered, so once a
 * message sent later (to every member) arrived everywhere, an earlier one that did not is not coming.
 */
async function barrier(sender, members) {
  const b = uid('barrier');
  await sender.conn.invoke('ToClients', members.map((m) => m.id), b);
  await Promise.all(members.map((m) => m.expect('clients', b)));
}

suite('scale-out over Redis', { concurrency: false }, () => {
  let redis;
  let nodes = [];
  after(async () => {
    await stopAll(nodes).finally(async () => {
      if (redis) {
        await redis.kill('SIGTERM');
        redis.cleanup();
      }
    });
  });

  test('three nodes: every target, remote group changes, client results and presence', async (t) => {
    redis = await startRedis({ name: 'redis-targets' });
    nodes = await cluster(redis, 3, 'targets');
    const [A, B, C] = nodes;
    const a1 = await member(t, A, WS_JSON, 'alice');
    const b1 = await member(t, B, WS_MSGPACK, 'bob');
    const c1 = await member(t, C, LP_JSON, 'alice');
    const c2 = await member(t, C, SSE_JSON, 'carol');
    const everyone = [a1, b1, c1, c2];

    // All / Others / AllExcept
    let m = uid('others');
    await a1.conn.invoke('ToOthers', m);
    await Promise.all([b1, c1, c2].map((x) => x.expect('others', m)));
    m = uid('allExcept');
    await a1.conn.invoke('AllExcept', [b1.id], m);
    await Promise.all([a1, c1, c2].map((x) => x.expect('allExcept', m)));
    await barrier(a1, everyone);
    assert.equal(b1.saw('allExcept', m), 0, 'AllExcept reached an excluded connection on another node');
    assert.equal(a1.saw('others', m), 0);

    // Client / Clients
    m = uid('client');
    await b1.conn.invoke('ToClient', c2.id, m);
    await c2.expect('client', m);
    m = uid('clients');
    await a1.conn.invoke('ToClients', [b1.id, c2.id, a1.id], m);
    await Promise.all([a1, b1, c2].map((x) => x.expect('clients', m)));

    // Group changes for connections on other nodes (acknowledged), Groups, GroupExcept, OthersInGroup
    const g1 = uid('g1');
    const g2 = uid('g2');
    await a1.conn.invoke('AddConnectionToGroup', b1.id, g1); // A → B
    await a1.conn.invoke('AddConnectionToGroup', c1.id, g1); // A → C
    await b1.conn.invoke('AddConnectionToGroup', c1.id, g2); // B → C
    await b1.conn.invoke('AddConnectionToGroup', c2.id, g2);
    await b1.conn.invoke('AddConnectionToGroup', a1.id, g2); // B → A
    m = uid('groups');
    await a1.conn.invoke('ToGroups', [g1, g2], m);
    await Promise.all([a1, b1, c1, c2].map((x) => x.expect('groups', m)));
    await barrier(a1, everyone);
    assert.equal(c1.saw('groups', m), 1, 'a member of two groups must get a Groups message once');
    m = uid('groupExcept');
    await b1.conn.invoke('ToGroupExcept', g2, [c2.id], m);
    await Promise.all([a1, c1].map((x) => x.expect('groupExcept', m)));
    m = uid('oig');
    await c1.conn.invoke('ToOthersInGroup', g2, m);
    await Promise.all([a1, c2].map((x) => x.expect('othersInGroup', m)));
    await barrier(a1, everyone);
    assert.equal(c2.saw('groupExcept', m), 0);
    assert.equal(c1.saw('othersInGroup', m), 0);

    // Presence, cluster-wide, asked on a node where the answer is not local
    assert.deepEqual(await a1.conn.invoke('GroupMembers', g2), [a1.id, c1.id, c2.id].sort());
    assert.equal(await a1.conn.invoke('IsConnected', c2.id), true);
    assert.equal(await a1.conn.invoke('IsConnected', 'no-such-connection'), false);
    assert.equal(await b1.conn.invoke('IsUserConnected', 'carol'), true);
    assert.equal(await b1.conn.invoke('IsUserConnected', 'dave'), false);
    assert.equal(await c2.conn.invoke('ConnectionCount'), 4);

    // Remove from another node, then the group no longer reaches it
    await c2.conn.invoke('RemoveConnectionFromGroup', b1.id, g1); // C → B
    assert.deepEqual(await a1.conn.invoke('GroupMembers', g1), [c1.id].sort());
    m = uid('afterRemove');
    await a1.conn.invoke('ToGroups', [g1], m);
    await c1.expect('groups', m);
    await barrier(a1, everyone);
    assert.equal(b1.saw('groups', m), 0, 'a connection removed by another node still got group messages');
    await assert.rejects(a1.conn.invoke('AddConnectionToGroup', 'no-such-connection', g1));

    // User / Users
    m = uid('user');
    await b1.conn.invoke('ToUser', 'alice', m);
    await Promise.all([a1, c1].map((x) => x.expect('user', m)));
    m = uid('users');
    await a1.conn.invoke('ToUsers', ['bob', 'carol'], m);
    await Promise.all([b1, c2].map((x) => x.expect('users', m)));
    await barrier(a1, everyone);
    assert.equal(a1.saw('users', m) + c1.saw('users', m), 0);

    // Client results routed back to the asking node
    assert.equal(await a1.conn.invoke('InvokeClient', b1.id), '42');
    assert.equal(await b1.conn.invoke('InvokeClient', c1.id), '42');

    // The TestHub of the contract: SendToAll and /clientresult span the processes
    const tb = await connect(t, B.url, WS_JSON, { path: '/testhub', start: false });
    const tbBox = inbox(tb, 'Broadcast');
    tb.on('Result', () => 10);
    await tb.start();
    const ta = await connect(t, A.url, WS_MSGPACK, { path: '/testhub' });
    m = uid('testhub');
    await ta.invoke('SendToAll', m);
    await tbBox.waitFor((x) => x === m, WAIT, 'TestHub Broadcast on another node');
    const tbId = await tb.invoke('GetCallerConnectionId');
    const res = await fetch(`${C.url}/clientresult/${tbId}`);
    assert.equal(await res.text(), '10');

    // Leaving ends presence
    await c2.conn.stop();
    const until = Date.now() + 5_000;
    while ((await a1.conn.invoke('IsUserConnected', 'carol')) && Date.now() < until) await sleep(50);
    assert.equal(await a1.conn.invoke('IsUserConnected', 'carol'), false);
    assert.equal(await a1.conn.invoke('ConnectionCount'), 3);
  });

  test('a node killed mid-run loses only its own connections', async (t) => {
    const [A, B, C] = nodes;
    const a = await member(t, A, WS_JSON, 'x');
    const b = await member(t, B, WS_JSON, 'y');
    const c = await member(t, C, WS_JSON, 'z');
    let m = uid('before');
    await a.conn.invoke('ToOthers', m);
    await Promise.all([b, c].map((x) => x.expect('others', m)));
    C.killed = true;
    await C.stop('SIGKILL');
    await withTimeout(c.conn.closed, 30_000, 'the killed node’s client to close');
    m = uid('after');
    await b.conn.invoke('ToOthers', m);
    await a.expect('others', m);
    // Its connections leave presence once the node misses its heartbeats (ttl 5 s).
    const deadline = Date.now() + 15_000;
    while ((await a.conn.invoke('IsConnected', c.id)) && Date.now() < deadline) await sleep(250);
    assert.equal(await a.conn.invoke('IsConnected', c.id), false);
    assert.equal(await a.conn.invoke('IsConnected', b.id), true);
    assert.ok(A.alive() && B.alive(), 'the surviving nodes are alive');
  });
});

/**
 * A steady broadcast from node A (SendToAll every `intervalMs`) while Redis is SIGKILLed and restarted.
 * Receivers on B and C (and A) use stateful reconnect. Returns the figures.
 */
async function outage(t, { aof, tag }) {
  const redis = await startRedis({ aof, name: `redis-${tag}` });
  const nodes = await cluster(redis, 3, tag);
  const [A, B, C] = nodes;
  let restarted = redis;
  try {
    const sender = await connect(t, A.url, WS_JSON, { path: '/testhub' });
    const receivers = [];
    for (const [node, cell] of [
      [A, WS_JSON],
      [B, WS_JSON],
      [C, WS_MSGPACK],
      [B, LP_JSON],
    ]) {
      const conn = await connect(t, node.url, cell, { path: '/testhub', start: false, stateful: cell.transport === 'WebSockets' });
      const got = [];
      conn.on('Broadcast', (msg) => {
        if (typeof msg === 'string' && msg.startsWith(`${tag}:`)) got.push(Number(msg.slice(tag.length + 1)));
      });
      await conn.start();
      receivers.push({ name: `${cell.name}@${node.name}`, conn, got, node });
    }
    const N = 1500;
    const intervalMs = 4;
    const killAt = 500;
    const restartAt = 800;
    // Before and after the outage, Redis drops the subscribers' connections only (as it does to
    // a slow subscriber): the publisher keeps writing, so the gap must come from the stream.
    const pubsubKills = [200, 1200];
    let restartTime = 0;
    let watchers = [];
    const before = {};
    const sendErrors = [];
    for (let i = 0; i < N; i++) {
      if (i === killAt) {
        for (const node of [B, C]) before[node.name] = (await node.stats())[0].reconnects;
        await redis.kill('SIGKILL');
      }
      if (i === restartAt) {
        // From the moment the new Redis is spawned to the end of each node's recovery.
        restartTime = Date.now();
        restarted = await startRedis({ port: redis.port, dir: redis.dir, aof, name: `redis-${tag}` });
        // Subscriptions back after the restart: when does each remote node finish recovering?
        watchers = [B, C].map(async (node) => {
          const deadline = Date.now() + 10_000;
          for (;;) {
            const [hub] = await node.stats();
            if (hub && hub.reconnects > before[node.name]) return [node.name, { after_restart_ms: hub.recovered_at_ms - restartTime, reconnects: hub.reconnects }];
            if (Date.now() > deadline) throw new Error(`${node.name} did not report a recovered subscription: ${JSON.stringify(hub)}`);
            await sleep(20);
          }
        });
      }
      if (pubsubKills.includes(i)) await redisCommand(redis.port, 'CLIENT KILL TYPE pubsub');
      sender.invoke('SendToAll', `${tag}:${i}`).catch((e) => sendErrors.push(e));
      await sleep(intervalMs);
    }
    const recovered = Object.fromEntries(await Promise.all(watchers));
    // Wait until every receiver has the last message (or 15 s).
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline && receivers.some((r) => !r.got.includes(N - 1))) await sleep(100);
    const figures = receivers.map((r) => {
      const seen = new Set(r.got);
      let inOrder = true;
      for (let k = 1; k < r.got.length; k++) if (r.got[k] <= r.got[k - 1]) inOrder = false;
      return { receiver: r.name, delivered: r.got.length, distinct: seen.size, lost: N - seen.size, duplicated: r.got.length - seen.size, inOrder };
    });
    const stats = {};
    for (const n of nodes) stats[n.name] = (await n.stats())[0];
    const report = { tag, aof, sent: N, sendErrors: sendErrors.length, recovered, figures, stats };
    console.log(`# scaleout-outage ${JSON.stringify(report)}`);
    assert.equal(sendErrors.length, 0, 'hub invocations must not fail while Redis is away');
    for (const n of nodes) assert.ok(n.alive(), `node ${n.name} died (log: ${n.logPath})`);
    for (const [name, r] of Object.entries(recovered)) {
      assert.ok(r.after_restart_ms <= 2000, `${name}: subscription back ${r.after_restart_ms} ms after the restart`);
    }
    return report;
  } finally {
    await stopAll(nodes);
    await restarted.kill('SIGTERM');
    redis.cleanup();
  }
}

suite('Redis outage during a steady broadcast', { concurrency: false }, () => {
  test('with AOF: every message delivered exactly once, in order, on every node', async (t) => {
    const report = await outage(t, { aof: true, tag: 'aof' });
    for (const f of report.figures) {
      assert.equal(f.lost, 0, `${f.receiver} lost messages: ${JSON.stringify(f)}`);
      assert.equal(f.duplicated, 0, `${f.receiver} got duplicates: ${JSON.stringify(f)}`);
      assert.ok(f.inOrder, `${f.receiver} got messages out of order`);
    }
    for (const [name, s] of Object.entries(report.stats)) {
      assert.equal(s.epoch_resets, 0, `${name}: a persisted Redis must not look reset`);
      assert.equal(s.dropped, 0, `${name}: nothing may be dropped from the buffer`);
    }
  });

  test('without persistence: no duplicates, order kept, and the reset is detected and reported', async (t) => {
    const report = await outage(t, { aof: false, tag: 'noaof' });
    for (const f of report.figures) {
      assert.equal(f.duplicated, 0, `${f.receiver} got duplicates: ${JSON.stringify(f)}`);
      assert.ok(f.inOrder, `${f.receiver} got messages out of order`);
    }
    for (const name of ['noaof-b', 'noaof-c']) {
      assert.ok(report.stats[name].epoch_resets >= 1, `${name} did not detect that Redis lost its data`);
      assert.ok(report.stats[name].gaps >= 1, `${name} did not report the gap`);
    }
  });
});

// Keep the matrix import honest (used for cell names in failures).
void CELLS;
