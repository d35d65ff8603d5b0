// A fault-injecting TCP proxy (loopback only): forwards bytes to the target, and can cut every
// live connection on demand (both sides destroyed at once, like a network drop).

import net from 'node:net';

export async function startProxy(targetUrl) {
  const target = new URL(targetUrl);
  const targetHost = target.hostname;
  const targetPort = Number(target.port || 80);
  const pairs = new Set();
  const stats = { accepted: 0, cuts: 0, socketsCut: 0, upgrades: 0 };
  let upgradeWaiters = [];

  let holdUntil = 0;
  const held = new Set();
  const server = net.createServer((client) => {
    stats.accepted++;
    client.setNoDelay(true);
    const wait = holdUntil - Date.now();
    if (wait > 0) {
      // a slow network: accept, but connect upstream (and forward anything) only later
      client.pause();
      held.add(client);
      const timer = setTimeout(() => {
        held.delete(client);
        if (!client.destroyed) bridge(client);
      }, wait);
      const drop = () => {
        clearTimeout(timer);
        held.delete(client);
      };
      client.on('close', drop);
      client.on('error', drop);
      return;
    }
    bridge(client);
  });

  function bridge(client) {
    const upstream = net.connect({ host: targetHost, port: targetPort });
    upstream.setNoDelay(true);
    const pair = { client, upstream };
    pairs.add(pair);
    const done = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', done);
    upstream.on('error', done);
    client.on('close', done);
    upstream.on('close', done);
    client.pipe(upstream);
    upstream.pipe(client);
    // notice WebSocket upgrades (the server's response starts with "HTTP/1.1 101")
    upstream.once('data', (chunk) => {
      if (chunk.subarray(0, 12).toString('latin1') === 'HTTP/1.1 101') {
        stats.upgrades++;
        const ready = upgradeWaiters.filter((w) => stats.upgrades >= w.n);
        upgradeWaiters = upgradeWaiters.filter((w) => stats.upgrades < w.n);
        for (const w of ready) w.resolve();
      }
    });
    client.resume();
  }

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();

  return {
    url: `http://127.0.0.1:${port}`,
    stats,
    live: () => pairs.size,
    /** Resolves once `n` WebSocket upgrades have passed through the proxy in total (bounded). */
    waitForUpgrades(n, ms = 10_000) {
      if (stats.upgrades >= n) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const w = { n, resolve };
        upgradeWaiters.push(w);
        setTimeout(() => {
          upgradeWaiters = upgradeWaiters.filter((x) => x !== w);
          reject(new Error(`timed out after ${ms} ms waiting for ${n} WebSocket upgrades (seen ${stats.upgrades})`));
        }, ms).unref();
      });
    },
    /** New connections accepted during the next `ms` are forwarded only when that time is over. */
    holdNewConnections(ms) {
      holdUntil = Date.now() + ms;
    },
    /** Destroys every live connection (client and upstream side); returns how many. */
    cutAll() {
      stats.cuts++;
      let n = 0;
      for (const { client, upstream } of [...pairs]) {
        client.resetAndDestroy ? client.resetAndDestroy() : client.destroy();
        upstream.destroy();
        n++;
      }
      pairs.clear();
      stats.socketsCut += n;
      return n;
    },
    async close() {
      for (const c of held) c.destroy();
      held.clear();
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      pairs.clear();
      await new Promise((r) => server.close(() => r()));
    },
  };
}
