// Shared helpers: the server under test, the browser, bounded waits, screenshots.
//
// The server: scripts/browser-tests.sh starts `tidings` and exports TIDINGS_URL (its base
// URL), TIDINGS_BIN (the binary, to restart it) and TIDINGS_PID_FILE (the live server's pid,
// rewritten by a restart so the script stops the right process). Without TIDINGS_URL each
// test file starts its own server from TIDINGS_BIN (default ../target/release/tidings).
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "..", "..");
export const screenshotDir = process.env.TIDINGS_SCREENSHOTS || path.join(repoRoot, "target", "screenshots");
const bin = process.env.TIDINGS_BIN || path.join(repoRoot, "target", "release", "tidings");
const logFile = process.env.TIDINGS_LOG || path.join(repoRoot, "target", "browser-tests", "server.log");

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; throws after `timeout` ms. */
export async function waitFor(what, fn, { timeout = 15000, interval = 100 } = {}) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(interval);
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
}

let ownServer = null;

function startServer(listen) {
  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  const out = fs.openSync(logFile, "a");
  const child = spawn(bin, ["--listen", listen], {
    cwd: repoRoot,
    stdio: ["ignore", "pipe", out],
    detached: true,
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`tidings did not start within 20 s (${bin})`)), 20000);
    let buf = "";
    child.stdout.on("data", (d) => {
      buf += d;
      fs.appendFileSync(logFile, d);
      const m = /listening on (http:\/\/\S+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1] });
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`tidings exited with ${code} before listening`));
    });
  }).then((s) => {
    child.stdout.removeAllListeners("data");
    child.stdout.on("data", (d) => fs.appendFileSync(logFile, d));
    child.removeAllListeners("exit");
    // Neither the server nor its pipe keeps this test process alive.
    child.stdout.unref();
    child.unref();
    if (process.env.TIDINGS_PID_FILE) fs.writeFileSync(process.env.TIDINGS_PID_FILE, String(child.pid));
    return s;
  });
}

/** The base URL of the server under test. */
export async function serverUrl() {
  if (process.env.TIDINGS_URL) return process.env.TIDINGS_URL.replace(/\/$/, "");
  if (!ownServer) {
    ownServer = await startServer("127.0.0.1:0");
    process.on("exit", () => {
      try { process.kill(ownServer.child.pid, "SIGKILL"); } catch {}
    });
  }
  return ownServer.url;
}

function livePid() {
  if (ownServer) return ownServer.child.pid;
  const f = process.env.TIDINGS_PID_FILE;
  if (!f) throw new Error("TIDINGS_PID_FILE is not set: cannot restart a server this run did not start");
  return Number(fs.readFileSync(f, "utf8").trim());
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Kills the server (SIGKILL: no graceful close) and waits until it is gone. */
export async function killServer() {
  const pid = livePid();
  process.kill(pid, "SIGKILL");
  await waitFor(`server pid ${pid} to exit`, () => !alive(pid), { timeout: 10000 });
}

/** Starts the server again on the same address. */
export async function restartServer(url) {
  const listen = new URL(url).host;
  const s = await startServer(listen);
  if (ownServer) ownServer = s;
  return s.url;
}

/** Debian's Chromium, headless, with the flags this machine needs. Playwright gives each
 *  launch a fresh temporary profile (--user-data-dir). */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    timeout: 30000,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
  });
}

/** A page in its own browser context (its own connections and storage), with the page's
 *  errors collected in `page.errors`. */
export async function openPage(browser, url, { width = 1500, height = 1100 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  context.setDefaultTimeout(15000);
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(e.message));
  await page.goto(url, { waitUntil: "load", timeout: 20000 });
  return page;
}

/** Waits until every hub of the page is connected. */
export async function allConnected(page, timeout = 20000) {
  await page.waitForFunction(
    () => window.demo && Object.values(window.demo.hubs).length > 0 &&
      Object.values(window.demo.hubs).every((h) => h.state === "connected"),
    null,
    { timeout },
  );
}

export async function screenshot(page, name) {
  fs.mkdirSync(screenshotDir, { recursive: true });
  const file = path.join(screenshotDir, `${name}.png`);
  // The top bar is sticky: scroll back up so a full-page shot has it at the top.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: file, fullPage: true });
  return file;
}
