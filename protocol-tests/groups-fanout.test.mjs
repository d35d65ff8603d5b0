// Groups and fan-out [ext] (contract §3): several stock connections, mixing cells and paths.
// Presence is awaited with bounded timeouts; absence is proven with a barrier: after the send under
// test has completed, the would-be receiver asks for a caller-only message; once that arrives, any
// message sent to it earlier would have arrived before it (one ordered stream per connection).

import assert from 'node:assert/strict';
import { pendingReason } from './lib/pending.mjs';
import { useServer } from './lib/server.mjs';
import { CELLS, NO_WS_CELLS, connect, matrixTest } from './lib/matrix.mjs';
import { inbox, uid } from './lib/util.mjs';

const server = await useServer(import.meta.url);
const base = server.url;
const WAIT = 10_000;

/** Another cell than `cell` whose features are not pending (rotating), or `cell` itself. */
function partnerOf(cell, pool = CELLS) {
  const i = CELLS.indexOf(cell);
  for (let k = 1; k <= CELLS.length; k++) {
    const c = CELLS[(i + k) % CELLS.length];
    if (c !== cell && pool.includes(c) && !pendingReason(c.needs)) return c;
  }
  return pool.includes(cell) ? cell : pool[0];
}

async function member(t, cell, path = '/testhub') {
  const conn = await connect(t, base, cell, { path, start: false });
  const boxes = {
    group: inbox(conn, 'GroupMessage'),
    broadcast: inbox(conn, 'Broadcast'),
    direct: inbox(conn, 'Direct'),
  };
  await conn.start();
  const who = `${cell.name}${path}`;
  return {
    conn,
    ...boxes,
    who,
    expectGroup: (g, m) => boxes.group.waitFor((gg, mm) => gg === g && mm === m, WAIT, `${who}: GroupMessage(${g}, ${m})`),
    expectBroadcast: (m) => boxes.broadcast.waitFor((mm) => mm === m, WAIT, `${who}: Broadcast(${m})`),
    expectDirect: (m) => boxes.direct.waitFor((mm) => mm === m, WAIT, `${who}: Direct(${m})`),
    /** Everything sent to this connection before now has been delivered once this returns. */
    async barrier() {
      const b = uid('barrier');
      await conn.invoke('SendToCaller', b);
      await boxes.broadcast.waitFor((mm) => mm === b, WAIT, `${who}: barrier`);
    },
    sawGroup: (m) => boxes.group.count((_, mm) => mm === m),
    sawBroadcast: (m) => boxes.broadcast.count((mm) => mm === m),
    sawDirect: (m) => boxes.direct.count((mm) => mm === m),
  };
}

function needsOf(...cells) {
  return [...new Set(cells.flatMap((c) => c.needs))];
}

for (const cell of CELLS) {
  const partner = partnerOf(cell);
  const tag = `(partner ${partner.name})`;
  const only = { cells: [cell], needs: needsOf(partner) };

  matrixTest(`${tag} AddToGroup + SendToGroup reach every member, caller included; RemoveFromGroup stops delivery`, only, async (t) => {
    const a = await member(t, cell);
    const b = await member(t, partner);
    const g = uid('group');
    assert.equal((await a.conn.invoke('AddToGroup', g)) ?? null, null);
    await b.conn.invoke('AddToGroup', g);
    const m1 = uid('m1');
    await a.conn.invoke('SendToGroup', g, m1);
    await a.expectGroup(g, m1);
    await b.expectGroup(g, m1);

    await b.conn.invoke('RemoveFromGroup', g);
    const m2 = uid('m2');
    await a.conn.invoke('SendToGroup', g, m2);
    await a.expectGroup(g, m2);
    await b.barrier();
    assert.equal(b.sawGroup(m2), 0, 'a removed member must not get group messages');

    await a.conn.invoke('RemoveFromGroup', g);
    const m3 = uid('m3');
    await b.conn.invoke('SendToGroup', g, m3); // non-member may send; nobody is in the group
    await a.barrier();
    await b.barrier();
    assert.equal(a.sawGroup(m3) + b.sawGroup(m3), 0);
    assert.equal(a.sawGroup(m1), 1, 'exactly once');
    assert.equal(b.sawGroup(m1), 1, 'exactly once');
  });

  matrixTest(`${tag} a non-member can SendToGroup; groups are isolated; double AddToGroup delivers once`, only, async (t) => {
    const a = await member(t, cell);
    const b = await member(t, partner);
    const c = await member(t, partner);
    const g1 = uid('g1');
    const g2 = uid('g2');
    await a.conn.invoke('AddToGroup', g1);
    await a.conn.invoke('AddToGroup', g1);
    await b.conn.invoke('AddToGroup', g2);
    const m = uid('iso');
    await c.conn.invoke('SendToGroup', g1, m);
    await a.expectGroup(g1, m);
    await a.barrier();
    await b.barrier();
    await c.barrier();
    assert.equal(a.sawGroup(m), 1, 'double AddToGroup must still deliver once');
    assert.equal(b.sawGroup(m), 0, 'member of another group must not receive');
    assert.equal(c.sawGroup(m), 0, 'non-member sender must not receive');
  });

  matrixTest(`${tag} SendToOthersInGroup excludes the caller`, only, async (t) => {
    const a = await member(t, cell);
    const b = await member(t, partner);
    const g = uid('group');
    await a.conn.invoke('AddToGroup', g);
    await b.conn.invoke('AddToGroup', g);
    const m = uid('others-in-group');
    await a.conn.invoke('SendToOthersInGroup', g, m);
    await b.expectGroup(g, m);
    await a.barrier();
    assert.equal(a.sawGroup(m), 0, 'caller must be excluded');
    // and the reverse direction
    const m2 = uid('others-in-group-2');
    await b.conn.invoke('SendToOthersInGroup', g, m2);
    await a.expectGroup(g, m2);
    await b.barrier();
    assert.equal(b.sawGroup(m2), 0);
  });

  matrixTest(`${tag} SendToAll reaches connections on /testhub and /testhub-nodetails (one hub), caller included`, only, async (t) => {
    const a = await member(t, cell);
    const b = await member(t, partner, '/testhub-nodetails');
    const c = await member(t, partner);
    const m = uid('all');
    await a.conn.invoke('SendToAll', m);
    await a.expectBroadcast(m);
    await b.expectBroadcast(m);
    await c.expectBroadcast(m);
    const m2 = uid('all-from-nodetails');
    await b.conn.invoke('SendToAll', m2);
    await a.expectBroadcast(m2);
    await c.expectBroadcast(m2);
  });

  const noWs = partnerOf(cell, NO_WS_CELLS);
  matrixTest(
    `${tag} SendToAll reaches a connection on /testhub-nowebsockets (${noWs.name}) and back`,
    { cells: [cell], needs: needsOf(noWs) },
    async (t) => {
      const a = await member(t, cell);
      const n = await member(t, noWs, '/testhub-nowebsockets');
      const m = uid('all-nows');
      await a.conn.invoke('SendToAll', m);
      await n.expectBroadcast(m);
      const m2 = uid('all-from-nows');
      await n.conn.invoke('SendToAll', m2);
      await a.expectBroadcast(m2);
      // groups are per hub type too
      const g = uid('group-across-paths');
      await n.conn.invoke('AddToGroup', g);
      const m3 = uid('group-across-paths');
      await a.conn.invoke('SendToGroup', g, m3);
      await n.expectGroup(g, m3);
    },
  );

  matrixTest(`${tag} groups span the TestHub paths (/testhub-nodetails member, /testhub sender)`, only, async (t) => {
    const a = await member(t, cell);
    const b = await member(t, partner, '/testhub-nodetails');
    const g = uid('group-paths');
    await b.conn.invoke('AddToGroup', g);
    const m = uid('to-nodetails-member');
    await a.conn.invoke('SendToGroup', g, m);
    await b.expectGroup(g, m);
  });

  matrixTest(`${tag} SendToOthers excludes the caller and reaches the others`, only, async (t) => {
    const a = await member(t, cell);
    const b = await member(t, partner);
    const c = await member(t, cell);
    const m = uid('others');
    await a.conn.invoke('SendToOthers', m);
    await b.expectBroadcast(m);
    await c.expectBroadcast(m);
    await a.barrier();
    assert.equal(a.sawBroadcast(m), 0, 'caller must be excluded');
    assert.equal(b.sawBroadcast(m), 1);
  });

  matrixTest(`${tag} SendToCaller reaches only the caller`, only, async (t) => {
    const a = await member(t, cell);
    const b = await member(t, partner);
    const m = uid('caller');
    await a.conn.invoke('SendToCaller', m);
    await a.expectBroadcast(m);
    await b.barrier();
    assert.equal(b.sawBroadcast(m), 0);
    assert.equal(a.sawBroadcast(m), 1);
  });

  matrixTest(`${tag} SendToConnection reaches exactly that connection; an unknown id is a no-op`, only, async (t) => {
    const a = await member(t, cell);
    const b = await member(t, partner);
    const c = await member(t, partner);
    const m = uid('direct');
    await a.conn.invoke('SendToConnection', b.conn.connectionId, m);
    await b.expectDirect(m);
    await a.barrier();
    await c.barrier();
    assert.equal(a.sawDirect(m), 0);
    assert.equal(c.sawDirect(m), 0);
    assert.equal(b.sawDirect(m), 1);
    // to itself
    const self = uid('direct-self');
    await a.conn.invoke('SendToConnection', a.conn.connectionId, self);
    await a.expectDirect(self);
    // unknown ids
    assert.equal((await a.conn.invoke('SendToConnection', 'AAAAAAAAAAAAAAAAAAAAAA', uid('nobody'))) ?? null, null);
    assert.equal((await a.conn.invoke('SendToConnection', '', uid('nobody'))) ?? null, null);
    const v = uid('after');
    assert.equal(await a.conn.invoke('Echo', v), v);
  });

  matrixTest(`${tag} a stopped connection leaves its groups; the group keeps working`, only, async (t) => {
    const a = await member(t, cell);
    const b = await member(t, partner);
    const g = uid('group-stop');
    await a.conn.invoke('AddToGroup', g);
    await b.conn.invoke('AddToGroup', g);
    await b.conn.stop();
    const m = uid('after-stop');
    await a.conn.invoke('SendToGroup', g, m);
    await a.expectGroup(g, m);
    assert.equal(b.sawGroup(m), 0);
  });
}

matrixTest('a group of 20 members across all available cells: SendToGroup reaches each exactly once', {}, async (t, cell) => {
  const usable = CELLS.filter((c) => !pendingReason(c.needs));
  const members = await Promise.all(Array.from({ length: 20 }, (_, i) => member(t, usable[i % usable.length])));
  const sender = await member(t, cell);
  const g = uid('big-group');
  await Promise.all(members.map((m) => m.conn.invoke('AddToGroup', g)));
  const msgs = [uid('bg1'), uid('bg2'), uid('bg3')];
  for (const m of msgs) await sender.conn.invoke('SendToGroup', g, m);
  await Promise.all(members.map((mb) => mb.expectGroup(g, msgs[2])));
  await Promise.all(members.map((mb) => mb.barrier()));
  for (const mb of members) {
    const got = mb.group.items.filter(([gg]) => gg === g).map(([, m]) => m);
    assert.deepStrictEqual(got, msgs, `${mb.who}: every group message once, in order`);
  }
  await sender.barrier();
  assert.equal(sender.group.items.length, 0, 'the non-member sender gets nothing');
});
