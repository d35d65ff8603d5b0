// The live dashboard over every transport and protocol, short polling, and the throttle.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { serverUrl, launchBrowser, openPage, screenshot } from "./lib/harness.mjs";

let base, browser;
before(async () => {
  base = await serverUrl();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

const TRANSPORTS = [
  ["ws", "WebSockets"],
  ["sse", "ServerSentEvents"],
  ["lp", "LongPolling"],
];
const PROTOCOLS = ["json", "messagepack"];

for (const [transport, expected] of TRANSPORTS) {
  for (const protocol of PROTOCOLS) {
    const skip = transport === "sse" && protocol === "messagepack"
      ? "SSE carries text only; MessagePack is binary (by design, as in ASP.NET)"
      : false;
    test(`live metrics over ${expected} with ${protocol}`, { skip }, async () => {
      const page = await openPage(browser, `${base}/?transport=${transport}&protocol=${protocol}`);
      try {
        await page.waitForFunction(
          (t) => window.demo.hubs.metrics?.state === "connected" && window.demo.hubs.metrics.transport === t,
          expected,
          { timeout: 20000 },
        );
        // Every hub of the page runs on the chosen transport.
        const hubs = await page.evaluate(() => window.demo.hubs);
        for (const [name, h] of Object.entries(hubs)) {
          if (h.state === "connected") assert.equal(h.transport, expected, `${name} transport`);
        }
        const first = await page.evaluate(() => window.demo.snapshots);
        // Two more server snapshots (1/s) and a stream of pulses (10/s) arrive.
        await page.waitForFunction((n) => window.demo.snapshots >= n + 2, first, { timeout: 8000 });
        await page.waitForFunction(() => window.demo.pulses >= 10, null, { timeout: 8000 });
        const shown = await page.locator("#metrics-transport").textContent();
        assert.equal(shown, expected, "the page shows the transport in use");
        assert.match(await page.locator("#metrics-protocol").textContent(), protocol === "json" ? /JSON/ : /MessagePack/);
        const conns = Number(await page.locator("#m-conns").textContent());
        assert.ok(conns >= 1, `connections tile shows ${conns}`);
        assert.equal(await page.locator("#m-backplane").textContent(), "in-memory");
        if (transport === "ws" && protocol === "json") {
          // DashboardHub: a metric to everyone, then one to a dashboard this page joined.
          await page.fill("#dash-name", "temperature");
          await page.click("#dash-form button");
          await page.locator("#dash-bars .metric .label", { hasText: "temperature" }).waitFor({ timeout: 5000 });
          await page.click("#dash-join-form button");
          await page.locator("#dash-joined", { hasText: "dashboard ops" }).waitFor({ timeout: 5000 });
          await page.check("#dash-only");
          await page.fill("#dash-name", "queue depth");
          await page.fill("#dash-value", "77");
          await page.click("#dash-form button");
          await page.locator("#dash-bars .metric", { hasText: "queue depth@ops" }).waitFor({ timeout: 5000 });
          // Let the charts fill a little before the screenshot.
          await page.waitForFunction(() => window.demo.snapshots >= 8, null, { timeout: 15000 });
          await screenshot(page, "dashboard");
        }
        assert.deepEqual(page.errors, []);
      } finally {
        await page.context().close();
      }
    });
  }
}

test("short polling reads GET /api/metrics", async () => {
  const page = await openPage(browser, `${base}/?transport=poll`);
  try {
    await page.waitForFunction(() => window.demo.polls >= 3, null, { timeout: 10000 });
    assert.match(await page.locator("#metrics-transport").textContent(), /Short polling/);
    assert.notEqual(await page.locator("#m-cpu").textContent(), "–");
    const res = await fetch(`${base}/api/metrics`);
    const snap = await res.json();
    assert.equal(snap.backplane, "in-memory");
    assert.ok(snap.residentMemoryBytes > 0);
    assert.deepEqual(page.errors, []);
  } finally {
    await page.context().close();
  }
});

test("a throttled subscriber gets fewer, fresher pulses", async () => {
  const page = await openPage(browser, `${base}/?transport=ws`);
  try {
    await page.waitForFunction(() => window.demo.pulseSubscription?.mode === "every", null, { timeout: 15000 });
    await page.selectOption("#pulse-rate", "1");
    await page.waitForFunction(() => window.demo.pulseSubscription?.mode === "throttled", null, { timeout: 5000 });
    const start = await page.evaluate(() => window.demo.pulses);
    await new Promise((r) => setTimeout(r, 3200));
    const got = (await page.evaluate(() => window.demo.pulses)) - start;
    // At most one per second (plus the immediate first one); the source makes ~32 meanwhile.
    assert.ok(got >= 2 && got <= 5, `throttled to 1/s, got ${got} in 3.2 s`);
    const sub = await page.evaluate(() => window.demo.pulseSubscription);
    assert.equal(sub.maxPerSecond, 1);
    assert.equal(sub.updatesPerSecond, 10);
  } finally {
    await page.context().close();
  }
});

test("/metrics and /healthz", async () => {
  const health = await (await fetch(`${base}/healthz`)).json();
  assert.deepEqual(health, { status: "ok", backplane: "in-memory" });
  const text = await (await fetch(`${base}/metrics`)).text();
  assert.match(text, /signalr_server_active_connections\{[^}]*signalr_transport="web_sockets"/);
  assert.match(text, /tidings_method_calls_total\{[^}]*rpc_method="Subscribe"/);
  assert.match(text, /signalr_server_connection_duration_seconds_bucket/);
});
