// Authorization (contract §5): /generateJwtToken and /authorizedhub.

import assert from 'node:assert/strict';
import { ptest } from './lib/pending.mjs';
import { useServer } from './lib/server.mjs';
import { connect, matrixTest } from './lib/matrix.mjs';
import { negotiate, request, tryWebSocket } from './lib/raw.mjs';
import { errMessage, rejectsWith, uid } from './lib/util.mjs';

const server = await useServer(import.meta.url);
const base = server.url;
const A = { needs: ['auth'] };
const UNAUTHORIZED = "Failed to complete negotiation with the server: Error: Unauthorized: Status code '401'";

async function getToken() {
  const r = await request(`${base}/generateJwtToken`);
  assert.equal(r.status, 200, `GET /generateJwtToken: ${r.status}`);
  assert.ok(r.text.length > 0, 'token body');
  return r.text;
}

ptest('GET /generateJwtToken returns a token', A, async () => {
  const token = await getToken();
  assert.ok(!/\s/.test(token), `token must be a bare string: ${JSON.stringify(token)}`);
});

matrixTest('with accessTokenFactory: Echo, GetUserNameIdentifier() = "testuser", GetUserClaim(unknown) = ""', A, async (t, cell) => {
  let calls = 0;
  const conn = await connect(t, base, cell, {
    path: '/authorizedhub',
    accessTokenFactory: () => {
      calls++;
      return getToken();
    },
  });
  const v = uid('auth');
  assert.equal(await conn.invoke('Echo', v), v);
  assert.equal(await conn.invoke('GetUserNameIdentifier'), 'testuser');
  assert.equal(await conn.invoke('GetUserClaim', 'urn:tidings:no-such-claim'), '');
  assert.ok(calls >= 1, 'the token factory was used');
});

matrixTest('without a token start() rejects with exactly the 401 negotiation error', A, async (t, cell) => {
  const conn = await connect(t, base, cell, { path: '/authorizedhub', start: false });
  const err = await rejectsWith(conn.start(), 15_000, 'start() without token');
  assert.equal(errMessage(err), UNAUTHORIZED);
});

matrixTest('with an invalid token start() rejects with exactly the 401 negotiation error', A, async (t, cell) => {
  const conn = await connect(t, base, cell, { path: '/authorizedhub', start: false, accessTokenFactory: () => 'not-a-valid-token' });
  const err = await rejectsWith(conn.start(), 15_000, 'start() with invalid token');
  assert.equal(errMessage(err), UNAUTHORIZED);
});

ptest('[raw] negotiate on /authorizedhub: 401 with empty body without/with an invalid token; 200 with a valid one', A, async () => {
  const none = await negotiate(base, '/authorizedhub');
  assert.equal(none.status, 401);
  assert.equal(none.text, '', 'a 401 must have an empty body');
  const bad = await negotiate(base, '/authorizedhub', { headers: { Authorization: 'Bearer not-a-valid-token' } });
  assert.equal(bad.status, 401);
  assert.equal(bad.text, '');
  const token = await getToken();
  const ok = await negotiate(base, '/authorizedhub', { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(ok.status, 200, ok.text);
  assert.deepEqual(
    ok.json.availableTransports.map((x) => x.transport),
    ['WebSockets', 'ServerSentEvents', 'LongPolling'],
  );
  const viaQuery = await negotiate(base, '/authorizedhub', { query: `negotiateVersion=1&access_token=${encodeURIComponent(token)}` });
  assert.equal(viaQuery.status, 200, `access_token query: ${viaQuery.text}`);
});

ptest('[raw] transport requests on /authorizedhub without a token: 401 with empty body; the token opens them', A, async () => {
  const token = await getToken();
  const n = await negotiate(base, '/authorizedhub', { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(n.status, 200);
  const url = `${base}/authorizedhub?id=${n.json.connectionToken}`;
  for (const [label, opts] of [
    ['GET (long poll)', { method: 'GET', timeout: 5_000 }],
    ['GET (event-stream)', { method: 'GET', headers: { Accept: 'text/event-stream' }, timeout: 5_000 }],
    ['POST', { method: 'POST', body: '{"protocol":"json","version":1}\u001e' }],
    ['DELETE', { method: 'DELETE' }],
  ]) {
    const r = await request(url, opts);
    assert.equal(r.status, 401, `${label}: ${r.status}`);
    assert.equal(r.text, '', `${label}: 401 body must be empty`);
  }
  const ws = await tryWebSocket(url);
  if (ws.ws) ws.ws.terminate();
  assert.equal(ws.status, 401, `WebSocket upgrade without token: ${ws.ws ? '101' : ws.status ?? ws.error?.message}`);
  const wsBad = await tryWebSocket(url, { headers: { Authorization: 'Bearer not-a-valid-token' } });
  if (wsBad.ws) wsBad.ws.terminate();
  assert.equal(wsBad.status, 401, 'WebSocket upgrade with an invalid token');
  const wsOk = await tryWebSocket(url, { headers: { Authorization: `Bearer ${token}` } });
  assert.ok(wsOk.ws, `WebSocket upgrade with the token must open: ${wsOk.status ?? wsOk.error?.message}`);
  wsOk.ws.terminate();
});
