// Provides the base URL of the server under test.
//
// * TIDINGS_URL set: use that server (nothing is spawned).
// * otherwise: spawn `../target/release/examples/testhub --listen 127.0.0.1:0` (TESTHUB_BIN
//   overrides the path), wait for the stdout line `listening on http://ADDR`, and stop it with
//   SIGTERM after the tests of the file. Its stderr (and any further stdout) goes to
//   ../target/protocol-tests-logs/<file>.log.

import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after } from 'node:test';

const here = path.dirname(fileURLToPath(import.meta.url));
const suiteDir = path.resolve(here, '..');
const targetDir = path.resolve(suiteDir, '..', 'target');
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;

export function testhubBinary() {
  return process.env.TESTHUB_BIN
    ? path.resolve(process.env.TESTHUB_BIN)
    : path.join(targetDir, 'release', 'examples', 'testhub');
}

/**
 * Starts (or locates) the server. Returns { url, stop(), alive(), logPath }.
 * `name` names the log file.
 */
export async function startServer(name = 'server') {
  if (process.env.TIDINGS_URL) {
    const url = process.env.TIDINGS_URL.replace(/\/+$/, '');
    return { url, external: true, stop: async () => {}, alive: () => true, logPath: null };
  }
  const bin = testhubBinary();
  if (!existsSync(bin)) {
    throw new Error(
      `testhub binary not found at ${bin}: build it with ` +
        '`cargo build --release --example testhub` (in the repo root), or set TESTHUB_BIN or TIDINGS_URL',
    );
  }
  const logDir = path.join(targetDir, 'protocol-tests-logs');
  mkdirSync(logDir, { recursive: true });
  const logPath = path.join(logDir, `${name}.log`);
  const log = createWriteStream(logPath);
  const child = spawn(bin, ['--listen', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { RUST_LOG: 'info', ...process.env },
  });
  child.stderr.pipe(log, { end: false });
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
  });

  const url = await new Promise((resolve, reject) => {
    let buf = '';
    let done = false;
    const timer = setTimeout(() => {
      if (done) return;
      done = true;
      child.kill('SIGKILL');
      reject(new Error(`testhub did not print 'listening on http://ADDR' within ${START_TIMEOUT_MS} ms (log: ${logPath})`));
    }, START_TIMEOUT_MS);
    child.on('error', (e) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reject(new Error(`cannot spawn ${bin}: ${e.message}`));
    });
    exitPromise.then(({ code, signal }) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reject(new Error(`testhub exited before listening (code ${code}, signal ${signal}); log: ${logPath}`));
    });
    child.stdout.on('data', (chunk) => {
      log.write(chunk);
      if (done) return;
      buf += chunk.toString('utf8');
      const m = /^listening on (http:\/\/\S+)\s*$/m.exec(buf);
      if (m) {
        done = true;
        clearTimeout(timer);
        resolve(m[1].replace(/\/+$/, ''));
      }
    });
  });

  return {
    url,
    external: false,
    logPath,
    pid: child.pid,
    alive: () => exited === null,
    async stop() {
      if (exited) {
        log.end();
        return exited;
      }
      child.kill('SIGTERM');
      let timer;
      const res = await Promise.race([
        exitPromise,
        new Promise((r) => {
          timer = setTimeout(() => r(null), STOP_TIMEOUT_MS);
        }),
      ]);
      clearTimeout(timer);
      if (res === null) {
        child.kill('SIGKILL');
        await exitPromise;
        log.end();
        throw new Error(`testhub did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM (killed); log: ${logPath}`);
      }
      log.end();
      return res;
    },
  };
}

/**
 * For a test file: starts the server, and registers an `after` hook that checks the server
 * survived the file's tests (a crash fails the file) and stops it.
 *   const server = await useServer(import.meta.url);  // server.url
 */
export async function useServer(fileUrl) {
  const name = path.basename(fileURLToPath(fileUrl)).replace(/\.test\.mjs$/, '');
  const server = await startServer(name);
  after(async () => {
    const wasAlive = server.alive();
    await server.stop();
    if (!wasAlive) {
      throw new Error(`the server process died during the tests of ${name} (log: ${server.logPath})`);
    }
  });
  return server;
}
