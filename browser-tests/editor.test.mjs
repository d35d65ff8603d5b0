// Two windows edit one document and converge; a stale overlapping edit is rejected.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { serverUrl, launchBrowser, openPage, allConnected, screenshot, waitFor } from "./lib/harness.mjs";

const OT = createRequire(import.meta.url)("../js-client-demo/public/ot.js");

let base, browser;
before(async () => {
  base = await serverUrl();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

test("ot.js: concurrent non-conflicting edits converge in either order", () => {
  let seed = 42;
  const rnd = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
  const doc = "the quick brown fox";
  let checked = 0;
  for (let i = 0; i < 20000; i++) {
    const mk = () => {
      const pos = rnd(doc.length + 1);
      return { pos, del: Math.min(3, rnd(doc.length - pos + 1)), ins: ["", "X", "YY"][rnd(3)] };
    };
    const a = mk(), b = mk();
    if (OT.conflicts(a, b)) { assert.ok(OT.conflicts(b, a)); continue; }
    const viaA = OT.apply(OT.apply(doc, a), OT.transform(b, a, false));
    const viaB = OT.apply(OT.apply(doc, b), OT.transform(a, b, true));
    assert.equal(viaA, viaB, JSON.stringify({ a, b }));
    checked++;
  }
  assert.ok(checked > 5000);
  assert.deepEqual(OT.diff("a😀b", "a😃b"), { pos: 1, del: 2, ins: "😃" });
});

test("two pages edit one document and end with the same text", async () => {
  const doc = `converge-${Date.now()}`;
  const a = await openPage(browser, `${base}/?doc=${doc}&name=ann`);
  const b = await openPage(browser, `${base}/?doc=${doc}&name=bob&protocol=messagepack`);
  try {
    await allConnected(a);
    await allConnected(b);
    for (const p of [a, b]) await p.waitForFunction(() => window.demo.editor.joined, null, { timeout: 10000 });
    await a.locator("#doc-text").click();
    await a.keyboard.type("Hello from Ann. ", { delay: 15 });
    await waitFor("bob to see ann's text", async () => (await b.locator("#doc-text").inputValue()).includes("Hello from Ann."));
    // Now both type at once: Ann at the end, Bob at the start.
    await b.locator("#doc-text").click();
    await b.keyboard.press("Control+Home");
    await a.locator("#doc-text").click();
    await a.keyboard.press("Control+End");
    await Promise.all([
      a.keyboard.type("Ann types at the end.", { delay: 12 }),
      b.keyboard.type("Bob types at the start. ", { delay: 9 }),
    ]);
    const settled = async (p) => p.evaluate(() => {
      const ed = window.demo.editor;
      return !ed.pending && !ed.inFlight && document.getElementById("doc-text").value === ed.confirmed;
    });
    await waitFor("both editors to settle", async () => (await settled(a)) && (await settled(b)), { timeout: 15000 });
    const [ta, tb] = [await a.locator("#doc-text").inputValue(), await b.locator("#doc-text").inputValue()];
    assert.equal(ta, tb, "both windows show the same text");
    assert.ok(ta.includes("Ann types at the end."), ta);
    assert.ok(ta.includes("Bob types at the start."), ta);
    assert.ok(ta.includes("Hello from Ann."), ta);
    const [va, vb] = [await a.evaluate(() => window.demo.editor.version), await b.evaluate(() => window.demo.editor.version)];
    assert.equal(va, vb);
    const history = await (await fetch(`${base}/api/documents/${doc}/history`)).json();
    assert.equal(history.version, va, "the log's version is the pages' version");
    let text = "";
    for (const e of history.events) text = OT.apply(text, e.data.op);
    assert.equal(text, ta, "replaying the event log gives the same text");
    await screenshot(a, "editor");
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await a.context().close();
    await b.context().close();
  }
});

test("an overlapping edit based on a stale version is rejected with a clear error", async () => {
  const doc = `stale-${Date.now()}`;
  const a = await openPage(browser, `${base}/?doc=${doc}`);
  try {
    await allConnected(a);
    await a.waitForFunction(() => window.demo.editor.joined, null, { timeout: 10000 });
    const err = await a.evaluate(async (doc) => {
      const c = window.demo.connections.collab;
      await c.invoke("UpdateDocument", doc, { baseVersion: 0, op: { pos: 0, del: 0, ins: "abcdef" } });
      await c.invoke("UpdateDocument", doc, { baseVersion: 1, op: { pos: 1, del: 3, ins: "X" } });
      try {
        // Based on version 1, deleting text that version 2 already replaced.
        await c.invoke("UpdateDocument", doc, { baseVersion: 1, op: { pos: 2, del: 2, ins: "Y" } });
        return null;
      } catch (e) {
        return e.message;
      }
    }, doc);
    assert.match(err ?? "", /HubException: Edit rejected: it overlaps a concurrent edit \(version 2\)/);
    // A stale edit that does not overlap is rebased instead.
    const rebased = await a.evaluate(async (doc) => {
      const c = window.demo.connections.collab;
      return c.invoke("UpdateDocument", doc, { baseVersion: 1, op: { pos: 6, del: 0, ins: "!" } });
    }, doc);
    assert.equal(rebased.version, 3);
    assert.deepEqual(rebased.op, { pos: 4, del: 0, ins: "!" });
    await a.waitForFunction(() => document.getElementById("doc-text").value === "aXef!", null, { timeout: 5000 });
  } finally {
    await a.context().close();
  }
});
