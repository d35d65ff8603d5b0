// The transport x protocol matrix and a `connect()` that builds a stock HubConnection for a cell.

import {
  DefaultHttpClient,
  HttpClient,
  HttpTransportType,
  HubConnectionBuilder,
  LogLevel,
} from '@microsoft/signalr';
import { MessagePackHubProtocol } from '@microsoft/signalr-protocol-msgpack';
import { ptest } from './pending.mjs';
import { withTimeout } from './util.mjs';

/** SSE cannot carry MessagePack (it is text-only), so there are five cells. */
export const CELLS = [
  { transport: 'WebSockets', protocol: 'json', needs: ['websockets', 'json'] },
  { transport: 'WebSockets', protocol: 'messagepack', needs: ['websockets', 'msgpack'] },
  { transport: 'ServerSentEvents', protocol: 'json', needs: ['sse', 'json'] },
  { transport: 'LongPolling', protocol: 'json', needs: ['longpolling', 'json'] },
  { transport: 'LongPolling', protocol: 'messagepack', needs: ['longpolling', 'msgpack'] },
].map((c) => ({ ...c, name: `${c.transport}/${c.protocol === 'messagepack' ? 'msgpack' : 'json'}` }));

export const WS_JSON = CELLS[0];
export const WS_MSGPACK = CELLS[1];
export const SSE_JSON = CELLS[2];
export const LP_JSON = CELLS[3];
export const LP_MSGPACK = CELLS[4];

export const isMsgpack = (cell) => cell.protocol === 'messagepack';

/** Cells usable on `/testhub-nowebsockets` (no WebSockets there). */
export const NO_WS_CELLS = CELLS.filter((c) => c.transport !== 'WebSockets');

/**
 * Declares one test per cell: `[WebSockets/json] NAME`. `opts.needs` adds features;
 * `opts.cells` restricts the cells. fn(t, cell).
 */
export function matrixTest(name, opts, fn) {
  const { needs = [], cells = CELLS, ...rest } = opts ?? {};
  for (const cell of cells) {
    ptest(`[${cell.name}] ${name}`, { ...rest, needs: [...cell.needs, ...needs] }, (t) => fn(t, cell));
  }
}

/** A logger that keeps the client's log lines (and echoes them when TIDINGS_DEBUG is set). */
export class CollectingLogger {
  constructor(minLevel = LogLevel.Warning, label = '') {
    this.minLevel = process.env.TIDINGS_DEBUG ? Math.min(minLevel, LogLevel.Debug) : minLevel;
    this.label = label;
    this.lines = [];
  }
  log(level, message) {
    if (level < this.minLevel) return;
    this.lines.push({ level, message, at: Date.now() });
    if (process.env.TIDINGS_DEBUG) process.stderr.write(`[client ${this.label}] ${LogLevel[level]}: ${message}\n`);
  }
  count(re, since = 0) {
    return this.lines.filter((l) => l.at >= since && re.test(l.message)).length;
  }
}

/**
 * An HttpClient (the client's public extension point) that delegates to the stock
 * DefaultHttpClient and records every request: method, url, status, response content.
 * `rewriteUrl(url, request)` may alter request URLs (used to ask for negotiate version 0).
 */
export class RecordingHttpClient extends HttpClient {
  constructor(logger, rewriteUrl) {
    super();
    this.inner = new DefaultHttpClient(logger);
    this.rewriteUrl = rewriteUrl;
    this.requests = [];
  }
  async send(request) {
    const url = this.rewriteUrl ? this.rewriteUrl(request.url, request) : request.url;
    const rec = { method: request.method, url, status: null, content: null, error: null, settled: false };
    let markDone;
    rec.done = new Promise((r) => (markDone = r));
    this.requests.push(rec);
    try {
      const res = await this.inner.send({ ...request, url });
      rec.status = res.statusCode;
      rec.content = res.content;
      return res;
    } catch (e) {
      rec.status = e && typeof e.statusCode === 'number' ? e.statusCode : null;
      rec.error = e;
      throw e;
    } finally {
      rec.settled = true;
      markDone();
    }
  }
  /** Resolves when every request made so far has settled (bounded by `ms`). */
  settled(ms = 10_000) {
    return withTimeout(Promise.all(this.requests.map((r) => r.done)), ms, 'recorded HTTP requests to settle');
  }
  getCookieString(url) {
    return this.inner.getCookieString(url);
  }
  /** The parsed bodies of successful negotiate responses, in order. */
  negotiations() {
    return this.requests
      .filter((r) => /\/negotiate(\?|$)/.test(r.url) && r.status === 200 && typeof r.content === 'string')
      .map((r) => JSON.parse(r.content));
  }
}

/**
 * Builds (and by default starts) a stock HubConnection for `cell` against `baseUrl + path`.
 * Options: path ('/testhub'), url (full URL, overrides path), headers, accessTokenFactory,
 * skipNegotiation, reconnect (true | delays array), stateful (true | options), start (true),
 * logLevel, record (use a RecordingHttpClient; also implied by rewriteUrl), rewriteUrl,
 * serverTimeoutMs, keepAliveMs, httpOptions (extra withUrl options).
 * The connection is stopped after the test (`t.after`). Extras on the returned connection:
 * `.log` (CollectingLogger), `.http` (RecordingHttpClient or undefined), `.closed` (promise of the
 * onclose error), `.closeCount()`, `.cell`.
 */
export async function connect(t, baseUrl, cell, opts = {}) {
  const {
    path = '/testhub',
    url = baseUrl + path,
    headers,
    accessTokenFactory,
    skipNegotiation,
    reconnect,
    stateful,
    start = true,
    logLevel = LogLevel.Warning,
    record = false,
    rewriteUrl,
    serverTimeoutMs,
    keepAliveMs,
    httpOptions = {},
  } = opts;
  const logger = new CollectingLogger(logLevel, cell.name);
  const http = record || rewriteUrl ? new RecordingHttpClient(logger, rewriteUrl) : undefined;
  const options = { transport: HttpTransportType[cell.transport], ...httpOptions };
  if (headers) options.headers = headers;
  if (accessTokenFactory) options.accessTokenFactory = accessTokenFactory;
  if (skipNegotiation) options.skipNegotiation = true;
  if (http) options.httpClient = http;
  let builder = new HubConnectionBuilder().withUrl(url, options).configureLogging(logger);
  if (cell.protocol === 'messagepack') builder = builder.withHubProtocol(new MessagePackHubProtocol());
  if (reconnect) builder = Array.isArray(reconnect) ? builder.withAutomaticReconnect(reconnect) : builder.withAutomaticReconnect();
  if (stateful) builder = stateful === true ? builder.withStatefulReconnect() : builder.withStatefulReconnect(stateful);
  if (serverTimeoutMs !== undefined) builder = builder.withServerTimeout(serverTimeoutMs);
  if (keepAliveMs !== undefined) builder = builder.withKeepAliveInterval(keepAliveMs);
  const conn = builder.build();
  conn.log = logger;
  conn.http = http;
  conn.cell = cell;
  let closeCount = 0;
  conn.closed = new Promise((resolve) => {
    conn.onclose((err) => {
      closeCount++;
      resolve(err);
    });
  });
  conn.closeCount = () => closeCount;
  if (t) {
    t.after(async () => {
      try {
        await withTimeout(conn.stop(), 10_000, 'connection stop during cleanup');
      } catch {
        /* cleanup is best-effort */
      }
    });
  }
  if (start) await withTimeout(conn.start(), 30_000, `start() of ${cell.name} connection to ${url}`);
  return conn;
}
