// A notification POSTed over HTTP reaches a page that only has SSE; chat between two pages.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { serverUrl, launchBrowser, openPage, allConnected, screenshot } from "./lib/harness.mjs";

let base, browser;
before(async () => {
  base = await serverUrl();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

async function post(body) {
  const res = await fetch(`${base}/api/notifications`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

test("POST /api/notifications reaches an SSE-only page, by user, by group and to all", async () => {
  const user = `carol${Date.now() % 100000}`;
  const page = await openPage(browser, `${base}/?transport=sse&name=${user}`);
  const other = await openPage(browser, `${base}/?transport=ws&name=dave`);
  try {
    await allConnected(page);
    await allConnected(other);
    assert.equal(await page.evaluate(() => window.demo.hubs.notifications.transport), "ServerSentEvents");
    // To one user.
    let r = await post({ title: "Build passed", body: "main is green", level: "success", user });
    assert.equal(r.status, 202);
    assert.equal(r.body.target, `user:${user}`);
    await page.locator("#notif-list .notif .title", { hasText: "Build passed" }).waitFor({ timeout: 10000 });
    // To a group the page joins.
    await page.fill("#notif-group", "ops");
    await page.click("#notif-group-form button");
    await page.locator("#notif-groups .chip", { hasText: "ops" }).waitFor({ timeout: 5000 });
    r = await post({ title: "Disk almost full", level: "warning", group: "ops" });
    assert.equal(r.status, 202);
    await page.locator("#notif-list .notif .title", { hasText: "Disk almost full" }).waitFor({ timeout: 10000 });
    // To everyone, from the page's own form.
    await other.fill("#notif-title", "Lunch is served");
    await other.click("#notif-form button[type=submit]");
    await page.locator("#notif-list .notif .title", { hasText: "Lunch is served" }).waitFor({ timeout: 10000 });
    // The other user got only the broadcast.
    await other.locator("#notif-list .notif .title", { hasText: "Lunch is served" }).waitFor({ timeout: 10000 });
    const seen = await other.evaluate(() => window.demo.notifications.map((n) => n.title));
    assert.deepEqual(seen, ["Lunch is served"]);
    // Bad requests get a 400 with a reason.
    r = await post({ title: "x", level: "panic" });
    assert.equal(r.status, 400);
    assert.match(r.body.error, /level 'panic'/);
    await screenshot(page, "notifications");
    assert.deepEqual([...page.errors, ...other.errors], []);
  } finally {
    await page.context().close();
    await other.context().close();
  }
});

test("two pages chat with each other, in the open and in a room", async () => {
  const a = await openPage(browser, `${base}/?name=erin&transport=lp`);
  const b = await openPage(browser, `${base}/?name=frank&protocol=messagepack`);
  try {
    await allConnected(a);
    await allConnected(b);
    await a.fill("#chat-text", "hi frank, erin here");
    await a.click("#chat-form button");
    await b.locator("#chat-messages .text", { hasText: "hi frank, erin here" }).waitFor({ timeout: 10000 });
    await b.fill("#chat-text", "hello erin!");
    await b.press("#chat-text", "Enter");
    await a.locator("#chat-messages .text", { hasText: "hello erin!" }).waitFor({ timeout: 10000 });
    // A room: only members get its messages.
    for (const p of [a, b]) {
      await p.fill("#room-name", "rust");
      await p.click("#room-form button");
      await p.locator("#rooms button.active", { hasText: "rust" }).waitFor({ timeout: 5000 });
    }
    await a.fill("#chat-text", "cargo build --release");
    await a.click("#chat-form button");
    await b.locator("#chat-messages li", { hasText: "cargo build --release" }).locator(".room", { hasText: "#rust" }).waitFor({ timeout: 10000 });
    const fromB = await b.evaluate(() => window.demo.chat.map((m) => `${m.user}:${m.room ?? ""}:${m.text}`));
    assert.deepEqual(fromB, ["erin::hi frank, erin here", "frank::hello erin!", "erin:rust:cargo build --release"]);
    await screenshot(b, "chat");
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await a.context().close();
    await b.context().close();
  }
});
