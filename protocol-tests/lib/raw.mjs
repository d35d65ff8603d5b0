// Raw HTTP / WebSocket helpers. Used ONLY for what a well-behaved client never does (status
// codes, misuse of ids, malformed data, cookies on negotiate responses, negotiate version 0
// framing) and for the non-hub `/echo` endpoint. Everything hub-level goes through the stock client.

import WebSocket from 'ws';
import { deferred, withTimeout } from './util.mjs';

export const RS = '\u001e';

export function wsUrl(httpUrl) {
  return httpUrl.replace(/^http/, 'ws');
}

/** POST (by default) `base + path + '/negotiate?' + query`; returns { status, headers, text, json }. */
export async function negotiate(base, path, { query = 'negotiateVersion=1', method = 'POST', headers = {} } = {}) {
  const url = `${base}${path}/negotiate${query ? `?${query}` : ''}`;
  const res = await withTimeout(fetch(url, { method, headers }), 10_000, `${method} ${url}`);
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, headers: res.headers, text, json };
}

/** A plain HTTP request; returns { status, headers, text }. Bounded. */
export async function request(url, { method = 'GET', headers = {}, body, timeout = 10_000 } = {}) {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeout);
  try {
    const res = await fetch(url, { method, headers, body, signal: ac.signal, redirect: 'manual' });
    const text = await res.text();
    return { status: res.status, headers: res.headers, text };
  } catch (e) {
    if (ac.signal.aborted) throw new Error(`timed out after ${timeout} ms: ${method} ${url}`);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Tries a WebSocket upgrade. Resolves { ws } when it opens (101), { status, body } when the server
 * answers with another status, or { error } on a network error. Bounded.
 */
export function tryWebSocket(url, { headers = {}, timeout = 10_000 } = {}) {
  return withTimeout(
    new Promise((resolve) => {
      const ws = new WebSocket(wsUrl(url), { headers });
      ws.on('open', () => resolve({ ws }));
      ws.on('unexpected-response', (req, res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode, body }));
        res.on('error', () => resolve({ status: res.statusCode, body }));
        req.destroy();
      });
      ws.on('error', (error) => resolve({ error }));
    }),
    timeout,
    `WebSocket upgrade ${url}`,
  );
}

/** A raw WebSocket with a message queue. */
export class RawSocket {
  constructor(ws) {
    this.ws = ws;
    this.queue = [];
    this.waiters = [];
    this.closeInfo = null;
    const closed = deferred();
    this.closed = closed.promise;
    ws.on('message', (data, isBinary) => {
      const msg = { data: isBinary ? Buffer.from(data) : data.toString('utf8'), isBinary };
      const w = this.waiters.shift();
      if (w) w(msg);
      else this.queue.push(msg);
    });
    ws.on('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString() };
      closed.resolve(this.closeInfo);
      for (const w of this.waiters.splice(0)) w(null);
    });
    ws.on('error', () => {});
  }
  static async open(url, opts) {
    const r = await tryWebSocket(url, opts);
    if (!r.ws) throw new Error(`WebSocket upgrade to ${url} failed: ${r.status ?? r.error?.message}`);
    return new RawSocket(r.ws);
  }
  send(data, opts) {
    this.ws.send(data, opts);
  }
  /** Next message ({data, isBinary}) or null when the socket closed. */
  next(ms = 10_000, what = 'WebSocket message') {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    if (this.closeInfo) return Promise.resolve(null);
    const d = deferred();
    this.waiters.push(d.resolve);
    return withTimeout(d.promise, ms, what).catch((e) => {
      this.waiters = this.waiters.filter((w) => w !== d.resolve);
      throw e;
    });
  }
  /** Reads messages until the text collected contains `n` record separators; returns the records. */
  async nextRecords(n = 1, ms = 10_000) {
    let text = this._pendingText ?? '';
    const deadline = Date.now() + ms;
    while (text.split(RS).length - 1 < n) {
      const m = await this.next(Math.max(1, deadline - Date.now()), `${n} JSON record(s)`);
      if (!m) throw new Error(`socket closed before ${n} record(s) arrived; got ${JSON.stringify(text)}`);
      text += typeof m.data === 'string' ? m.data : m.data.toString('utf8');
    }
    const parts = text.split(RS);
    const records = parts.slice(0, n);
    this._pendingText = parts.slice(n).join(RS);
    return records;
  }
  close() {
    try {
      this.ws.terminate();
    } catch {
      /* ignore */
    }
  }
}

/**
 * Reads an SSE response incrementally. `open(url, headers)` → { status, headers, nextEvent(ms),
 * rawText(), close() }. Events are { data } with `data:` lines joined by '\n'.
 */
export async function openSse(url, { headers = {}, timeout = 10_000 } = {}) {
  const ac = new AbortController();
  const res = await withTimeout(
    fetch(url, { headers: { Accept: 'text/event-stream', ...headers }, signal: ac.signal }),
    timeout,
    `SSE GET ${url}`,
  );
  let raw = '';
  let buf = '';
  const events = [];
  let waiters = [];
  let ended = false;
  const decoder = new TextDecoder();
  const pump = async () => {
    try {
      for await (const chunk of res.body) {
        const text = decoder.decode(chunk, { stream: true });
        raw += text;
        buf += text;
        // events end at a blank line
        for (;;) {
          const m = /\r\n\r\n|\n\n|\r\r/.exec(buf);
          if (!m) break;
          const block = buf.slice(0, m.index);
          buf = buf.slice(m.index + m[0].length);
          const data = [];
          let isEvent = false;
          for (const line of block.split(/\r\n|\n|\r/)) {
            if (line.startsWith(':')) continue;
            if (line.startsWith('data')) {
              isEvent = true;
              let v = line.slice(4);
              if (v.startsWith(':')) v = v.slice(1);
              if (v.startsWith(' ')) v = v.slice(1);
              data.push(v);
            }
          }
          if (isEvent) {
            const ev = { data: data.join('\n') };
            const w = waiters.shift();
            if (w) w(ev);
            else events.push(ev);
          }
        }
      }
    } catch {
      /* aborted */
    }
    ended = true;
    for (const w of waiters.splice(0)) w(null);
  };
  if (res.body) pump();
  return {
    status: res.status,
    headers: res.headers,
    rawText: () => raw,
    nextEvent(ms = 10_000) {
      if (events.length) return Promise.resolve(events.shift());
      if (ended) return Promise.resolve(null);
      const d = deferred();
      waiters.push(d.resolve);
      return withTimeout(d.promise, ms, 'SSE event').catch((e) => {
        waiters = waiters.filter((w) => w !== d.resolve);
        throw e;
      });
    },
    close: () => ac.abort(),
  };
}

/** Parses Set-Cookie headers of a fetch Response's headers into [{name, value, attrs}]. */
export function parseSetCookies(headers) {
  const list = typeof headers.getSetCookie === 'function' ? headers.getSetCookie() : [];
  return list.map((line) => {
    const [pair, ...attrParts] = line.split(';');
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    const attrs = {};
    for (const a of attrParts) {
      const i = a.indexOf('=');
      const k = (i < 0 ? a : a.slice(0, i)).trim().toLowerCase();
      attrs[k] = i < 0 ? true : a.slice(i + 1).trim();
    }
    return { name, value, attrs, line };
  });
}
