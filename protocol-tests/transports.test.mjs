// Transport-level rules (contract §1): endpoints without WebSockets, no switching transports on an
// existing connection, and message framing across frames/POSTs. The stock client drives the real
// connections; raw requests only do what it never does (misuse a token, split a message).

import assert from 'node:assert/strict';
import { ptest } from './lib/pending.mjs';
import { useServer } from './lib/server.mjs';
import { LP_JSON, SSE_JSON, WS_JSON, connect, matrixTest } from './lib/matrix.mjs';
import { RS, RawSocket, negotiate, openSse, request, tryWebSocket } from './lib/raw.mjs';
import { uid, withTimeout } from './lib/util.mjs';

const server = await useServer(import.meta.url);
const base = server.url;

function is4xx(status) {
  return typeof status === 'number' && status >= 400 && status < 500;
}

async function assertUsable(conn) {
  const v = uid('usable');
  assert.equal(await conn.invoke('Echo', v), v);
}

ptest('a WebSocket upgrade on /testhub-nowebsockets is refused with a 4xx (token and no id)', {}, async () => {
  const n = await negotiate(base, '/testhub-nowebsockets');
  assert.equal(n.status, 200);
  for (const url of [`${base}/testhub-nowebsockets?id=${n.json.connectionToken}`, `${base}/testhub-nowebsockets`]) {
    const r = await tryWebSocket(url);
    if (r.ws) r.ws.terminate();
    assert.ok(!r.ws, `${url}: must not answer 101`);
    assert.ok(is4xx(r.status), `${url}: expected 4xx, got ${r.status ?? r.error?.message}`);
  }
});

function tokenOf(conn) {
  const [n] = conn.http.negotiations();
  assert.ok(n?.connectionToken, 'negotiated token');
  return n.connectionToken;
}

ptest('[WebSockets/json] other transports on a WebSocket connection\'s token → 4xx; the connection keeps working', {}, async (t) => {
  const conn = await connect(t, base, WS_JSON, { record: true });
  const url = `${base}/testhub?id=${tokenOf(conn)}`;
  const sse = await request(url, { headers: { Accept: 'text/event-stream' }, timeout: 5_000 });
  assert.ok(is4xx(sse.status), `SSE GET: ${sse.status}`);
  const lp = await request(url, { timeout: 5_000 });
  assert.ok(is4xx(lp.status), `long-poll GET: ${lp.status}`);
  const post = await request(url, { method: 'POST', body: `{"type":1,"target":"SendToCaller","arguments":["injected"]}${RS}` });
  assert.ok(is4xx(post.status), `POST on a WebSocket connection: ${post.status}`);
  await assertUsable(conn);
});

ptest('[LongPolling/json] SSE or WebSocket on a long-polling connection\'s token → 4xx; the connection keeps working', { needs: ['longpolling'] }, async (t) => {
  const conn = await connect(t, base, LP_JSON, { record: true });
  const url = `${base}/testhub?id=${tokenOf(conn)}`;
  const sse = await request(url, { headers: { Accept: 'text/event-stream' }, timeout: 5_000 });
  assert.ok(is4xx(sse.status), `SSE GET: ${sse.status}`);
  const ws = await tryWebSocket(url);
  if (ws.ws) ws.ws.terminate();
  assert.ok(!ws.ws && is4xx(ws.status), `WebSocket: ${ws.ws ? 101 : ws.status ?? ws.error?.message}`);
  await assertUsable(conn);
});

ptest('[ServerSentEvents/json] long polling or WebSocket on an SSE connection\'s token → 4xx; the connection keeps working', { needs: ['sse'] }, async (t) => {
  const conn = await connect(t, base, SSE_JSON, { record: true });
  const url = `${base}/testhub?id=${tokenOf(conn)}`;
  const lp = await request(url, { timeout: 5_000 });
  assert.ok(is4xx(lp.status), `long-poll GET: ${lp.status}`);
  const ws = await tryWebSocket(url);
  if (ws.ws) ws.ws.terminate();
  assert.ok(!ws.ws && is4xx(ws.status), `WebSocket: ${ws.ws ? 101 : ws.status ?? ws.error?.message}`);
  await assertUsable(conn);
});

matrixTest('long-poll requests of the stock client get the statuses it relies on (first poll 200, POST 200, DELETE 2xx)', { cells: [LP_JSON] }, async (t, cell) => {
  const conn = await connect(t, base, cell, { record: true });
  await assertUsable(conn);
  const live = conn.http.requests.filter((r) => !/\/negotiate/.test(r.url));
  const polls = live.filter((r) => r.method === 'GET');
  const posts = live.filter((r) => r.method === 'POST');
  await withTimeout(Promise.all(posts.map((r) => r.done)), 10_000, 'the POSTs');
  assert.equal(polls[0]?.status, 200, 'first poll');
  assert.ok(posts.length >= 2 && posts.every((p) => p.status === 200), `POST statuses ${posts.map((p) => p.status)}`);
  const before = conn.http.requests.length;
  await conn.stop();
  // stop() fires the Close POST without awaiting it and races it with the DELETE, so only the
  // DELETE's status is meaningful here (a POST landing after the DELETE may rightly get 404)
  const dels = conn.http.requests.slice(before).filter((r) => r.method === 'DELETE');
  await withTimeout(Promise.all(dels.map((d) => d.done)), 10_000, 'DELETE');
  assert.equal(dels.length, 1, 'one DELETE on stop');
  assert.ok(dels[0].status >= 200 && dels[0].status < 300, `DELETE status ${dels[0].status}`);
});

// ---- framing: one message split across frames/POSTs, several messages in one ----

function completionsById(records) {
  const out = {};
  for (const r of records) {
    const m = JSON.parse(r);
    if (m.type === 3) out[m.invocationId] = m;
  }
  return out;
}

ptest('[raw WebSockets/json] a hub message split across frames is reassembled; several messages in one frame are all handled', {}, async (t) => {
  const n = await negotiate(base, '/testhub');
  const sock = await RawSocket.open(`${base}/testhub?id=${n.json.connectionToken}`);
  t.after(() => sock.close());
  sock.send('{"protocol":"js');
  sock.send(`on","version":1}${RS}`);
  const [hs] = await sock.nextRecords(1);
  assert.equal(hs, '{}');
  const inv = (id, arg) => `{"type":1,"invocationId":"${id}","target":"Echo","arguments":["${arg}"]}${RS}`;
  const three = inv('3', 'three');
  sock.send(inv('1', 'one') + inv('2', 'two') + three.slice(0, 20));
  sock.send(three.slice(20, 40));
  sock.send(three.slice(40));
  const recs = [];
  let got = {};
  for (let i = 0; i < 10 && Object.keys(got).length < 3; i++) {
    recs.push(...(await sock.nextRecords(1)));
    got = completionsById(recs);
  }
  assert.deepEqual(
    Object.values(got).map((m) => [m.invocationId, m.result]),
    [
      ['1', 'one'],
      ['2', 'two'],
      ['3', 'three'],
    ],
  );
});

async function collectRecordsLp(url, want, ms = 10_000) {
  const deadline = Date.now() + ms;
  let text = '';
  while (Date.now() < deadline) {
    const r = await request(url, { timeout: Math.max(1000, deadline - Date.now()) });
    assert.equal(r.status, 200, `poll: ${r.status}`);
    text += r.text;
    const recs = text.split(RS).slice(0, -1);
    if (want(recs)) return recs;
  }
  throw new Error(`long polling: wanted records not received; got ${JSON.stringify(text)}`);
}

ptest('[raw LongPolling/json] a hub message split across POSTs is reassembled; several messages in one POST are all handled', { needs: ['longpolling'] }, async () => {
  const n = await negotiate(base, '/testhub');
  const url = `${base}/testhub?id=${n.json.connectionToken}`;
  try {
    const first = await request(url, { timeout: 5_000 });
    assert.equal(first.status, 200);
    assert.equal((await request(url, { method: 'POST', body: '{"protocol":"js' })).status, 200);
    assert.equal((await request(url, { method: 'POST', body: `on","version":1}${RS}` })).status, 200);
    const [hs] = await collectRecordsLp(url, (r) => r.length >= 1);
    assert.equal(hs, '{}');
    const inv = (id, arg) => `{"type":1,"invocationId":"${id}","target":"Echo","arguments":["${arg}"]}${RS}`;
    const three = inv('3', 'three');
    assert.equal((await request(url, { method: 'POST', body: inv('1', 'one') + inv('2', 'two') + three.slice(0, 25) })).status, 200);
    assert.equal((await request(url, { method: 'POST', body: three.slice(25) })).status, 200);
    const recs = await collectRecordsLp(url, (r) => Object.keys(completionsById(r)).length >= 3);
    const got = completionsById(recs);
    assert.deepEqual(
      ['1', '2', '3'].map((id) => got[id]?.result),
      ['one', 'two', 'three'],
    );
  } finally {
    await request(url, { method: 'DELETE' }).catch(() => {});
  }
});

ptest('[raw ServerSentEvents/json] event-stream headers; handshake and completions arrive as data: events', { needs: ['sse'] }, async () => {
  const n = await negotiate(base, '/testhub');
  const url = `${base}/testhub?id=${n.json.connectionToken}`;
  const sse = await openSse(url);
  try {
    assert.equal(sse.status, 200);
    assert.match(sse.headers.get('content-type') ?? '', /^text\/event-stream/i);
    assert.equal((await request(url, { method: 'POST', body: `{"protocol":"json","version":1}${RS}` })).status, 200);
    const hs = await sse.nextEvent(10_000);
    assert.equal(hs.data, `{}${RS}`);
    const inv = (id, arg) => `{"type":1,"invocationId":"${id}","target":"Echo","arguments":["${arg}"]}${RS}`;
    assert.equal((await request(url, { method: 'POST', body: inv('1', 'a\\nb') + inv('2', 'two') })).status, 200);
    let text = '';
    for (let i = 0; i < 10 && Object.keys(completionsById(text.split(RS).slice(0, -1))).length < 2; i++) {
      const ev = await sse.nextEvent(10_000);
      assert.ok(ev, 'event');
      assert.ok(!ev.data.includes('\n'), `hub JSON over SSE must not contain raw newlines: ${JSON.stringify(ev.data)}`);
      text += ev.data;
    }
    const got = completionsById(text.split(RS).slice(0, -1));
    assert.equal(got['1'].result, 'a\nb');
    assert.equal(got['2'].result, 'two');
  } finally {
    sse.close();
  }
});

ptest('[raw LongPolling/json] after the server ends a connection (CloseConnection) the next poll returns 204, not 404', { needs: ['longpolling', 'close-connection'] }, async () => {
  const n = await negotiate(base, '/testhub');
  const url = `${base}/testhub?id=${n.json.connectionToken}`;
  try {
    assert.equal((await request(url, { timeout: 5_000 })).status, 200);
    assert.equal((await request(url, { method: 'POST', body: `{"protocol":"json","version":1}${RS}` })).status, 200);
    const [hs] = await collectRecordsLp(url, (r) => r.length >= 1);
    assert.equal(hs, '{}');
    const post = await request(url, { method: 'POST', body: `{"type":1,"target":"CloseConnection","arguments":["bye",false]}${RS}` });
    assert.equal(post.status, 200);
    const recs = await collectRecordsLp(url, (r) => r.some((x) => JSON.parse(x).type === 7));
    const close = recs.map((x) => JSON.parse(x)).find((m) => m.type === 7);
    assert.equal(close.error, 'bye');
    const next = await request(url, { timeout: 10_000 });
    assert.equal(next.status, 204, `poll after the end: ${next.status}`);
  } finally {
    await request(url, { method: 'DELETE' }).catch(() => {});
  }
});

matrixTest('a token is dead once its connection has ended: transport requests with it → 404', {}, async (t, cell) => {
  const conn = await connect(t, base, cell, { record: true });
  const token = tokenOf(conn);
  await assertUsable(conn);
  await conn.stop();
  await new Promise((r) => setTimeout(r, 100));
  const url = `${base}/testhub?id=${token}`;
  const post = await request(url, { method: 'POST', body: `{"type":6}${RS}` });
  assert.equal(post.status, 404, `POST with an ended connection's token: ${post.status}`);
  const ws = await tryWebSocket(url);
  if (ws.ws) ws.ws.terminate();
  assert.equal(ws.status, 404, `WebSocket with an ended connection's token: ${ws.ws ? 101 : ws.status ?? ws.error?.message}`);
  const sse = await request(url, { headers: { Accept: 'text/event-stream' }, timeout: 5_000 });
  assert.equal(sse.status, 404, `SSE GET with an ended connection's token: ${sse.status}`);
});

ptest('[WebSockets/json] a second WebSocket with a live (non-stateful) connection\'s token is refused and does not disturb it', {}, async (t) => {
  const conn = await connect(t, base, WS_JSON, { record: true });
  const url = `${base}/testhub?id=${tokenOf(conn)}`;
  const ws = await tryWebSocket(url);
  if (ws.ws) {
    // accepted: it must at least not take the connection over
    ws.ws.send(`{"protocol":"json","version":1}${RS}`);
    await new Promise((r) => setTimeout(r, 200));
    ws.ws.terminate();
  }
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(conn.closeCount(), 0, 'the original connection must stay open');
  await assertUsable(conn);
  assert.ok(!ws.ws && is4xx(ws.status), `a second WebSocket for the same connection should be refused (409 in ASP.NET), got ${ws.ws ? 101 : ws.status}`);
});
