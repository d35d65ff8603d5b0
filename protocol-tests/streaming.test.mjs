// Server→client streams and client→server (upload) streams (contract §3, §9), every cell.

import assert from 'node:assert/strict';
import { LogLevel, Subject } from '@microsoft/signalr';
import { useServer } from './lib/server.mjs';
import { connect, matrixTest } from './lib/matrix.mjs';
import { collectStream, deferred, errMessage, sleep, uid, withTimeout } from './lib/util.mjs';

const server = await useServer(import.meta.url);
const base = server.url;
const S = { needs: ['streaming'] };
const U = { needs: ['upload-streams'] };

matrixTest('Stream yields "a", "b", "c" then completes', S, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const r = await collectStream(conn.stream('Stream'), 10_000, 'Stream').done;
  assert.equal(r.error, null, r.error && errMessage(r.error));
  assert.deepStrictEqual(r.items, ['a', 'b', 'c']);
});

matrixTest('EmptyStream completes with 0 items', S, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const r = await collectStream(conn.stream('EmptyStream'), 10_000, 'EmptyStream').done;
  assert.equal(r.error, null, r.error && errMessage(r.error));
  assert.equal(r.completed, true);
  assert.deepStrictEqual(r.items, []);
});

matrixTest('StreamThrowException fails the stream with the exact detailed error', S, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const r = await collectStream(conn.stream('StreamThrowException', 'An error occurred.'), 10_000, 'StreamThrowException').done;
  assert.equal(r.completed, false, 'must end with an error');
  assert.equal(
    errMessage(r.error),
    "An unexpected error occurred invoking 'StreamThrowException' on the server. InvalidOperationException: An error occurred.",
  );
  const v = uid('after');
  assert.equal(await conn.invoke('Echo', v), v);
});

matrixTest('StreamThrowException on /testhub-nodetails → non-detailed error', S, async (t, cell) => {
  const conn = await connect(t, base, cell, { path: '/testhub-nodetails' });
  const r = await collectStream(conn.stream('StreamThrowException', 'An error occurred.'), 10_000, 'StreamThrowException').done;
  assert.equal(r.completed, false);
  assert.equal(errMessage(r.error), "An unexpected error occurred invoking 'StreamThrowException' on the server.");
});

matrixTest('InfiniteStream: dispose() sends a cancel and the server answers StreamCanceled()', S, async (t, cell) => {
  const conn = await connect(t, base, cell, { start: false });
  const canceled = deferred();
  let canceledArgs = null;
  conn.on('StreamCanceled', (...args) => {
    canceledArgs = args;
    canceled.resolve();
  });
  await conn.start();
  const items = [];
  let ended = null;
  const sub = conn.stream('InfiniteStream').subscribe({
    next: (i) => items.push(i),
    complete: () => (ended = 'complete'),
    error: (e) => (ended = e),
  });
  // the server handles messages in order: after this Echo it has started the stream
  assert.equal(await conn.invoke('Echo', 'started'), 'started');
  sub.dispose();
  await withTimeout(canceled.promise, 10_000, 'StreamCanceled');
  assert.deepStrictEqual(canceledArgs, []);
  assert.deepStrictEqual(items, []);
  assert.equal(ended, null, 'a disposed subscription gets no completion callbacks');
  assert.equal(await conn.invoke('Echo', 'still ok'), 'still ok');
});

matrixTest('Counter(5, 10) yields 0…4 in order', S, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const r = await collectStream(conn.stream('Counter', 5, 10), 10_000, 'Counter(5,10)').done;
  assert.equal(r.error, null, r.error && errMessage(r.error));
  assert.deepStrictEqual(r.items, [0, 1, 2, 3, 4]);
});

matrixTest('Counter(3, 200) waits delayMs before each item', S, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const t0 = Date.now();
  const r = await collectStream(conn.stream('Counter', 3, 200), 10_000, 'Counter(3,200)').done;
  const elapsed = Date.now() - t0;
  assert.deepStrictEqual(r.items, [0, 1, 2]);
  assert.ok(elapsed >= 550, `3 × 200 ms delays must take ≥ 600 ms (got ${elapsed} ms)`);
});

matrixTest('cancelling Counter mid-way stops the server sending items', S, async (t, cell) => {
  const conn = await connect(t, base, cell, { logLevel: LogLevel.Trace });
  const got3 = deferred();
  const c = collectStream(conn.stream('Counter', 1000, 20), 30_000, 'Counter(1000,20)', (item, sub, items) => {
    if (items.length === 3) {
      sub.dispose();
      got3.resolve();
    }
  });
  await withTimeout(got3.promise, 10_000, 'three Counter items');
  assert.deepStrictEqual(c.items, [0, 1, 2]);
  assert.ok(conn.log.count(/data received/) >= 3, 'the transport trace shows deliveries (sanity check of the probe)');
  // let in-flight items drain, then watch the wire (the client's transport trace) for a while
  await sleep(300);
  const since = Date.now();
  await sleep(800);
  const frames = conn.log.count(/data received/, since);
  assert.ok(frames <= 1, `the server kept sending after the cancel: ${frames} deliveries in 800 ms (Counter at 20 ms would give ~40)`);
  assert.deepStrictEqual(c.items, [0, 1, 2], 'no items after dispose');
  const v = uid('after-cancel');
  assert.equal(await conn.invoke('Echo', v), v);
});

matrixTest('a running InfiniteStream does not block a later Echo', S, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const sub = conn.stream('InfiniteStream').subscribe({ next() {}, complete() {}, error() {} });
  t.after(() => sub.dispose());
  for (let i = 0; i < 3; i++) {
    const v = uid('concurrent');
    assert.equal(await withTimeout(conn.invoke('Echo', v), 5_000, 'Echo while InfiniteStream runs'), v);
  }
});

matrixTest('two concurrent Counter streams interleave and both complete', S, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const a = collectStream(conn.stream('Counter', 5, 30), 10_000, 'Counter A');
  const b = collectStream(conn.stream('Counter', 4, 40), 10_000, 'Counter B');
  const [ra, rb] = await Promise.all([a.done, b.done]);
  assert.deepStrictEqual(ra.items, [0, 1, 2, 3, 4]);
  assert.deepStrictEqual(rb.items, [0, 1, 2, 3]);
});

matrixTest('StreamingConcat with a Subject: "Hello ", "world", "!" → "Hello world!"', U, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const subject = new Subject();
  const p = conn.invoke('StreamingConcat', subject);
  subject.next('Hello ');
  subject.next('world');
  await sleep(20);
  subject.next('!');
  subject.complete();
  assert.equal(await withTimeout(p, 10_000, 'StreamingConcat'), 'Hello world!');
});

matrixTest('StreamingConcat of an empty upload → ""', U, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const subject = new Subject();
  const p = conn.invoke('StreamingConcat', subject);
  subject.complete();
  assert.equal(await withTimeout(p, 10_000, 'StreamingConcat'), '');
});

matrixTest('an open upload does not block other invocations', U, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const subject = new Subject();
  const p = conn.invoke('StreamingConcat', subject);
  subject.next('x');
  const v = uid('during-upload');
  assert.equal(await withTimeout(conn.invoke('Echo', v), 5_000, 'Echo during upload'), v);
  subject.next('y');
  subject.complete();
  assert.equal(await withTimeout(p, 10_000, 'StreamingConcat'), 'xy');
});

matrixTest('an upload ending with error "Something bad" → exact HubException text', U, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const subject = new Subject();
  const p = conn.invoke('StreamingConcat', subject);
  subject.next('partial');
  subject.error(new Error('Something bad'));
  const r = await withTimeout(
    p.then(
      (v) => ({ ok: true, v }),
      (e) => ({ ok: false, e }),
    ),
    10_000,
    'StreamingConcat with error',
  );
  assert.equal(r.ok, false, `expected failure, got ${JSON.stringify(r.v)}`);
  assert.equal(errMessage(r.e), "An unexpected error occurred invoking 'StreamingConcat' on the server. HubException: Something bad");
  const v = uid('after');
  assert.equal(await conn.invoke('Echo', v), v);
});

matrixTest('StreamingConcat of 500 uploaded items keeps their order', U, async (t, cell) => {
  const conn = await connect(t, base, cell);
  const subject = new Subject();
  const p = conn.invoke('StreamingConcat', subject);
  const parts = Array.from({ length: 500 }, (_, i) => `${i % 10}${i % 7 === 0 ? 'é' : ''}`);
  for (const part of parts) subject.next(part);
  subject.complete();
  assert.equal(await withTimeout(p, 20_000, 'StreamingConcat(500 items)'), parts.join(''));
});
