// Negotiate endpoint and connection-id rules (contract §1), checked with raw HTTP: these are
// status codes, headers and id misuse that the stock client never exercises itself.

import assert from 'node:assert/strict';
import { ptest } from './lib/pending.mjs';
import { useServer } from './lib/server.mjs';
import { negotiate, request, tryWebSocket, parseSetCookies } from './lib/raw.mjs';
import { connect, matrixTest, WS_JSON } from './lib/matrix.mjs';

const server = await useServer(import.meta.url);
const base = server.url;

const WS = { transport: 'WebSockets', transferFormats: ['Text', 'Binary'] };
const SSE = { transport: 'ServerSentEvents', transferFormats: ['Text'] };
const LP = { transport: 'LongPolling', transferFormats: ['Text', 'Binary'] };
const ALL = [WS, SSE, LP];
const NO_WS = [SSE, LP];
const ID_RE = /^[A-Za-z0-9_-]{22}$/;

function assertV1(r, transports, label) {
  assert.equal(r.status, 200, `${label}: status (body ${r.text})`);
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/i, `${label}: content-type`);
  assert.ok(r.json, `${label}: body is JSON: ${r.text}`);
  assert.equal(r.json.negotiateVersion, 1, `${label}: negotiateVersion`);
  assert.equal(typeof r.json.connectionId, 'string', `${label}: connectionId`);
  assert.equal(typeof r.json.connectionToken, 'string', `${label}: connectionToken`);
  assert.match(r.json.connectionId, ID_RE, `${label}: connectionId is 22 chars base64url`);
  assert.match(r.json.connectionToken, ID_RE, `${label}: connectionToken is 22 chars base64url`);
  assert.notEqual(r.json.connectionToken, r.json.connectionId, `${label}: token must differ from id`);
  assert.deepEqual(r.json.availableTransports, transports, `${label}: availableTransports`);
  assert.equal(r.json.error, undefined, `${label}: no error`);
}

ptest('negotiate v1 on /testhub: shape, ids, all three transports', { needs: [] }, async () => {
  assertV1(await negotiate(base, '/testhub'), ALL, '/testhub');
});

ptest('negotiate v1 on /testhub-nodetails lists all three transports', {}, async () => {
  assertV1(await negotiate(base, '/testhub-nodetails'), ALL, '/testhub-nodetails');
});

ptest('negotiate v1 on /testhub-nowebsockets lists only SSE and long polling', {}, async () => {
  assertV1(await negotiate(base, '/testhub-nowebsockets'), NO_WS, '/testhub-nowebsockets');
});

ptest('negotiate v1 on /echo lists all three transports', {}, async () => {
  assertV1(await negotiate(base, '/echo'), ALL, '/echo');
});

ptest('negotiate v1 on /uncreatable works (the hub fails later)', { needs: ['uncreatable'] }, async () => {
  assertV1(await negotiate(base, '/uncreatable'), ALL, '/uncreatable');
});

ptest('every negotiate creates fresh ids and tokens', {}, async () => {
  const seen = new Set();
  for (let i = 0; i < 5; i++) {
    const r = await negotiate(base, '/testhub');
    assert.equal(r.status, 200);
    for (const v of [r.json.connectionId, r.json.connectionToken]) {
      assert.ok(!seen.has(v), `value ${v} repeated`);
      seen.add(v);
    }
  }
});

ptest('negotiate v0 (no negotiateVersion): version 0, no connectionToken', {}, async () => {
  for (const query of ['', 'negotiateVersion=0']) {
    const r = await negotiate(base, '/testhub', { query });
    const label = `query '${query}'`;
    assert.equal(r.status, 200, `${label}: status (${r.text})`);
    assert.equal(r.json.negotiateVersion ?? 0, 0, `${label}: negotiateVersion`);
    assert.ok(!('connectionToken' in r.json), `${label}: no connectionToken expected: ${r.text}`);
    assert.match(r.json.connectionId, ID_RE, `${label}: connectionId`);
    assert.deepEqual(r.json.availableTransports, ALL, `${label}: availableTransports`);
  }
});

ptest('negotiate v0: the connectionId is the transport id (WebSocket upgrade succeeds)', {}, async () => {
  const r = await negotiate(base, '/testhub', { query: '' });
  assert.equal(r.status, 200);
  const res = await tryWebSocket(`${base}/testhub?id=${r.json.connectionId}`);
  assert.ok(res.ws, `expected 101 with the v0 connectionId, got ${res.status ?? res.error?.message}`);
  res.ws.terminate();
});

ptest('negotiateVersion above the server maximum is answered with version 1 (protocol-notes B.2)', {}, async () => {
  assertV1(await negotiate(base, '/testhub', { query: 'negotiateVersion=7' }), ALL, 'negotiateVersion=7');
});

ptest('useStatefulReconnect is granted on /testhub when asked', { needs: ['stateful-reconnect'] }, async () => {
  const r = await negotiate(base, '/testhub', { query: 'negotiateVersion=1&useStatefulReconnect=true' });
  assertV1(r, ALL, '/testhub asked');
  assert.equal(r.json.useStatefulReconnect, true);
});

ptest('useStatefulReconnect is never included when not asked', {}, async () => {
  for (const path of ['/testhub', '/testhub-nodetails', '/testhub-nowebsockets', '/echo']) {
    const r = await negotiate(base, path);
    assert.equal(r.status, 200, path);
    assert.notEqual(r.json.useStatefulReconnect, true, `${path}: ${r.text}`);
  }
});

ptest('useStatefulReconnect is never granted on /testhub-nodetails', {}, async () => {
  const r = await negotiate(base, '/testhub-nodetails', { query: 'negotiateVersion=1&useStatefulReconnect=true' });
  assertV1(r, ALL, '/testhub-nodetails asked');
  assert.notEqual(r.json.useStatefulReconnect, true, r.text);
});

ptest('a method other than POST on negotiate gets a 4xx (405 expected)', {}, async () => {
  for (const method of ['GET', 'PUT', 'DELETE']) {
    const r = await request(`${base}/testhub/negotiate?negotiateVersion=1`, { method });
    assert.ok(r.status >= 400 && r.status < 500, `${method}: expected 4xx, got ${r.status}`);
  }
});

ptest('a malformed negotiateVersion gets a 4xx or 200 with error, never 5xx', {}, async () => {
  for (const v of ['abc', '-1', '1.5', '99999999999999999999']) {
    const r = await negotiate(base, '/testhub', { query: `negotiateVersion=${encodeURIComponent(v)}` });
    const label = `negotiateVersion=${v}`;
    assert.ok(r.status < 500, `${label}: got ${r.status}`);
    if (r.status === 200) {
      assert.equal(typeof r.json?.error, 'string', `${label}: 200 must carry {"error": ...}, got ${r.text}`);
      assert.ok(r.json.error.length > 0, `${label}: empty error`);
    } else {
      assert.ok(r.status >= 400, `${label}: expected 4xx, got ${r.status}`);
    }
  }
});

function assertNegotiateCookies(headers, label) {
  const cookies = parseSetCookies(headers);
  const byName = Object.fromEntries(cookies.map((c) => [c.name, c]));
  for (const [name, value] of [
    ['testCookie', 'testValue'],
    ['testCookie2', 'testValue2'],
  ]) {
    assert.ok(byName[name], `${label}: Set-Cookie ${name} missing; got ${JSON.stringify(cookies.map((c) => c.line))}`);
    assert.equal(byName[name].value, value, `${label}: ${name} value`);
    assert.equal(byName[name].attrs.path, '/', `${label}: ${name} Path=/`);
    if (byName[name].attrs.expires) {
      assert.ok(Date.parse(byName[name].attrs.expires) > Date.now(), `${label}: ${name} must not be expired`);
    }
  }
  const exp = byName.expiredCookie;
  assert.ok(exp, `${label}: Set-Cookie expiredCookie missing`);
  assert.equal(exp.attrs.path, '/', `${label}: expiredCookie Path=/`);
  assert.ok(exp.attrs.expires, `${label}: expiredCookie needs Expires: ${exp.line}`);
  const t = Date.parse(exp.attrs.expires);
  assert.ok(Number.isFinite(t) && t < Date.now(), `${label}: expiredCookie Expires must be in the past: ${exp.line}`);
}

ptest('negotiate responses set testCookie, testCookie2 and an expired expiredCookie (Path=/)', {}, async () => {
  for (const path of ['/testhub', '/testhub-nowebsockets', '/testhub-nodetails', '/echo']) {
    const r = await negotiate(base, path);
    assert.equal(r.status, 200, path);
    assertNegotiateCookies(r.headers, path);
  }
});

ptest('negotiate cookies are also set on non-200 responses of a /negotiate path', {}, async () => {
  const r = await request(`${base}/testhub/negotiate?negotiateVersion=1`, { method: 'GET' });
  assert.ok(r.status >= 400 && r.status < 500, `GET: ${r.status}`);
  assertNegotiateCookies(r.headers, 'GET /testhub/negotiate');
});

async function assert404Everywhere(path, id, label) {
  const url = `${base}${path}?id=${encodeURIComponent(id)}`;
  const get = await request(url, { method: 'GET', timeout: 5_000 });
  assert.equal(get.status, 404, `${label}: GET (long poll) ${get.status} ${get.text}`);
  const sse = await request(url, { method: 'GET', headers: { Accept: 'text/event-stream' }, timeout: 5_000 });
  assert.equal(sse.status, 404, `${label}: GET (event-stream) ${sse.status}`);
  const post = await request(url, { method: 'POST', body: '{"protocol":"json","version":1}\u001e' });
  assert.equal(post.status, 404, `${label}: POST ${post.status} ${post.text}`);
  const del = await request(url, { method: 'DELETE' });
  assert.equal(del.status, 404, `${label}: DELETE ${del.status} ${del.text}`);
  const ws = await tryWebSocket(url);
  if (ws.ws) ws.ws.terminate();
  assert.equal(ws.status, 404, `${label}: WebSocket upgrade must be refused with 404, got ${ws.ws ? '101' : ws.status ?? ws.error?.message}`);
}

ptest('the public connectionId is not a transport id: GET/POST/DELETE/WebSocket ?id=connectionId → 404', {}, async () => {
  for (const path of ['/testhub', '/testhub-nodetails', '/echo']) {
    const r = await negotiate(base, path);
    assert.equal(r.status, 200);
    await assert404Everywhere(path, r.json.connectionId, `${path} public id`);
    // positive control: the token itself is accepted
    const ok = await tryWebSocket(`${base}${path}?id=${r.json.connectionToken}`);
    assert.ok(ok.ws, `${path}: WebSocket with the token must open, got ${ok.status ?? ok.error?.message}`);
    ok.ws.terminate();
  }
});

ptest('the public connectionId of a live connection is rejected too', {}, async (t) => {
  const conn = await connect(t, base, WS_JSON);
  await assert404Everywhere('/testhub', conn.connectionId, 'live public id');
  assert.equal(await conn.invoke('Echo', 'still alive'), 'still alive');
});

ptest('an unknown id → 404 on every transport request', {}, async () => {
  await assert404Everywhere('/testhub', 'AAAAAAAAAAAAAAAAAAAAAA', 'unknown id');
  await assert404Everywhere('/testhub', 'not-a-connection', 'unknown id (other shape)');
});

ptest('hub paths are matched case-insensitively (negotiate)', {}, async () => {
  assertV1(await negotiate(base, '/TestHub'), ALL, '/TestHub');
  assertV1(await negotiate(base, '/TESTHUB-NOWEBSOCKETS'), NO_WS, '/TESTHUB-NOWEBSOCKETS');
});

ptest('hub paths are matched case-insensitively (stock client on /TestHub)', {}, async (t) => {
  const conn = await connect(t, base, WS_JSON, { path: '/TestHub' });
  assert.equal(await conn.invoke('Echo', 'case'), 'case');
});

// Negotiate version 0 through the stock client: a custom HttpClient (public option) removes
// `negotiateVersion=1` from the negotiate URL, so the client uses `connectionId` as the transport id.
function stripNegotiateVersion(url) {
  const u = new URL(url);
  if (u.pathname.toLowerCase().endsWith('/negotiate')) u.searchParams.delete('negotiateVersion');
  return u.toString();
}

matrixTest('negotiate v0 via the stock client: connectionId is the transport id and the hub works', {}, async (t, cell) => {
  const conn = await connect(t, base, cell, { rewriteUrl: stripNegotiateVersion });
  const negotiations = conn.http.negotiations();
  assert.equal(negotiations.length, 1);
  const [n] = negotiations;
  assert.equal(n.negotiateVersion ?? 0, 0, JSON.stringify(n));
  assert.ok(!('connectionToken' in n), JSON.stringify(n));
  assert.equal(conn.connectionId, n.connectionId);
  assert.equal(await conn.invoke('GetCallerConnectionId'), n.connectionId);
  assert.equal(await conn.invoke('Echo', 'v0 works'), 'v0 works');
});

matrixTest('the stock client uses the token, not the connectionId, as transport id (v1)', {}, async (t, cell) => {
  const conn = await connect(t, base, cell, { record: true });
  const [n] = conn.http.negotiations();
  assert.equal(n.negotiateVersion, 1);
  assert.notEqual(n.connectionToken, n.connectionId);
  assert.equal(conn.connectionId, n.connectionId);
  // every HTTP transport request carried the token
  for (const r of conn.http.requests.filter((x) => !/\/negotiate/.test(x.url))) {
    assert.equal(new URL(r.url).searchParams.get('id'), n.connectionToken, `${r.method} ${r.url}`);
  }
  assert.equal(await conn.invoke('GetCallerConnectionId'), n.connectionId);
});
