// Cross-node fan-out over Redis against the single-node figure, with the stock client.
//
//   node scripts/redis-bench.mjs --bin target/release/examples/testhub [--receivers 4]
//        [--messages 20000] [--size 64] [--paced 2000]
//
// Starts its own redis-server (free loopback port, no persistence) and testhub processes:
//   single       one node without Redis: sender and receivers on it (in-memory fan-out);
//   local+redis  one node of a Redis cluster, sender and receivers on it (publishing cost only);
//   cross-node   sender on node A, receivers on node B (every message through Redis).
// Throughput: the server-side `Blast(n, size)` of `/scaleout` sends n messages to All as fast as
// it can; deliveries/s = messages received by all receivers / (last receive - first receive).
// Latency: `ToOthers(sentAt)` paced 1 per ms by a client; receive time - send time, client clocks
// on one machine (includes the client→server hop, the same in every scenario).
// Bounded: every wait has a timeout; everything it started is stopped at the end.

import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'protocol-tests', 'package.json'));
const signalR = require('@microsoft/signalr');
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const BIN = path.resolve(arg('bin', path.join(here, '..', 'target', 'release', 'examples', 'testhub')));
const RECEIVERS = Number(arg('receivers', 4));
const MESSAGES = Number(arg('messages', 20000));
const SIZE = Number(arg('size', 64));
const PACED = Number(arg('paced', 2000));
const PROTOCOL = arg('protocol', 'messagepack');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const children = [];

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => (t = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms)))]).finally(() => clearTimeout(t));
}

async function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-bench-redis-'));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  children.push(child);
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise((res) => {
      const s = net.connect(port, '127.0.0.1', () => s.write('PING\r\n'));
      s.on('data', (d) => (s.destroy(), res(d.toString().startsWith('+PONG'))));
      s.on('error', () => res(false));
    });
    if (ok) return { url: `redis://127.0.0.1:${port}`, dir };
    await sleep(50);
  }
  throw new Error('redis-server did not start');
}

async function startNode(redisUrl) {
  const args = ['--listen', '127.0.0.1:0', ...(redisUrl ? ['--redis', redisUrl] : [])];
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: 'warn' } });
  children.push(child);
  return withTimeout(
    new Promise((resolve) => {
      let buf = '';
      child.stdout.on('data', (d) => {
        buf += d;
        const m = /listening on (http:\/\/\S+)/.exec(buf);
        if (m) resolve(m[1]);
      });
    }),
    30_000,
    'testhub start',
  );
}

async function client(base) {
  let b = new signalR.HubConnectionBuilder()
    .withUrl(`${base}/scaleout`, { transport: signalR.HttpTransportType.WebSockets, skipNegotiation: true })
    .configureLogging(signalR.LogLevel.Error);
  if (PROTOCOL === 'messagepack') b = b.withHubProtocol(new MessagePackHubProtocol());
  const conn = b.build();
  await withTimeout(conn.start(), 10_000, 'client start');
  return conn;
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN;
};

async function written(base) {
  const r = await fetch(`${base}/backplane`);
  const hubs = (await r.json()).hubs;
  return hubs[1] ? hubs[1].written : null; // the /scaleout hub
}

async function scenario(name, senderBase, receiverBase) {
  const sender = await client(senderBase);
  const receivers = [];
  for (let i = 0; i < RECEIVERS; i++) {
    const conn = await client(receiverBase);
    const r = { conn, blast: 0, first: 0, last: 0, lat: [] };
    conn.on('Blast', () => {
      const now = performance.now();
      if (r.blast === 0) r.first = now;
      r.last = now;
      r.blast++;
    });
    conn.on('Msg', (_kind, sentAt) => {
      r.lat.push(Date.now() - Number(sentAt));
    });
    receivers.push(r);
  }
  await sleep(300);
  // Throughput
  const w0 = await written(senderBase);
  const t0 = performance.now();
  await withTimeout(sender.invoke('Blast', MESSAGES, SIZE), 120_000, 'Blast');
  let publishRate = null;
  if (w0 !== null) {
    // How fast the sending node's publisher gets the burst into Redis (server side only).
    const until = Date.now() + 60_000;
    let w = w0;
    while (w - w0 < MESSAGES && Date.now() < until) {
      await sleep(5);
      w = await written(senderBase);
    }
    publishRate = Math.round(((w - w0) / (performance.now() - t0)) * 1000);
  }
  const deadline = Date.now() + 120_000;
  while (receivers.some((r) => r.blast < MESSAGES) && Date.now() < deadline) await sleep(20);
  const got = receivers.reduce((s, r) => s + r.blast, 0);
  const span = Math.max(...receivers.map((r) => r.last)) - Math.min(...receivers.map((r) => r.first));
  // Latency, paced
  for (let i = 0; i < PACED; i++) {
    sender.send('ToOthers', String(Date.now()));
    await sleep(1);
  }
  const until = Date.now() + 30_000;
  while (receivers.some((r) => r.lat.length < PACED) && Date.now() < until) await sleep(20);
  const lat = receivers.flatMap((r) => r.lat);
  for (const c of [sender, ...receivers.map((r) => r.conn)]) await c.stop();
  return {
    scenario: name,
    receivers: RECEIVERS,
    messages: MESSAGES,
    delivered: got,
    lost: RECEIVERS * MESSAGES - got,
    deliveries_per_s: Math.round((got / span) * 1000),
    redis_writes_per_s: publishRate,
    latency_ms: { p50: pct(lat, 50), p99: pct(lat, 99), max: Math.max(...lat), samples: lat.length },
  };
}

async function main() {
  if (spawnSync('redis-server', ['--version']).status !== 0) throw new Error('redis-server not found');
  const redis = await startRedis();
  const single = await startNode(null);
  const a = await startNode(redis.url);
  const b = await startNode(redis.url);
  const results = [];
  results.push(await scenario('single', single, single));
  results.push(await scenario('local+redis', a, a));
  results.push(await scenario('cross-node', a, b));
  const base = results[0].deliveries_per_s;
  for (const r of results) r.vs_single = Number((r.deliveries_per_s / base).toFixed(2));
  console.log(JSON.stringify({ protocol: PROTOCOL, size: SIZE, results }, null, 1));
  rmSync(redis.dir, { recursive: true, force: true });
}

main()
  .catch((e) => {
    console.error(e);
    process.exitCode = 1;
  })
  .finally(() => {
    for (const c of children) c.kill('SIGTERM');
  });
