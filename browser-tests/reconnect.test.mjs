// Killing the server and starting it again on the same port: the page reconnects by itself.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { serverUrl, launchBrowser, openPage, allConnected, killServer, restartServer, screenshot } from "./lib/harness.mjs";

let base, browser;
before(async () => {
  base = await serverUrl();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

for (const transport of ["ws", "lp"]) {
  test(`automatic reconnect after a server restart (${transport})`, async () => {
    const page = await openPage(browser, `${base}/?transport=${transport}`);
    try {
      await allConnected(page);
      await page.waitForFunction(() => window.demo.snapshots >= 1, null, { timeout: 10000 });
      await killServer();
      await page.waitForFunction(
        () => Object.values(window.demo.hubs).every((h) => h.state !== "connected"),
        null,
        { timeout: 20000 },
      );
      assert.match(await page.locator("#status-text").textContent(), /Reconnecting|Offline/);
      await restartServer(base);
      await allConnected(page, 30000);
      const before = await page.evaluate(() => window.demo.snapshots);
      await page.waitForFunction((n) => window.demo.snapshots >= n + 2, before, { timeout: 10000 });
      assert.match(await page.locator("#status-text").textContent(), /Connected · 5\/5/);
      // The chat works on the new server.
      await page.fill("#chat-text", "back again");
      await page.click("#chat-form button");
      await page.locator("#chat-messages .text", { hasText: "back again" }).waitFor({ timeout: 10000 });
      if (transport === "ws") await screenshot(page, "reconnected");
    } finally {
      await page.context().close();
    }
  });
}
