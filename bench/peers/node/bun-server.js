// Bun pub/sub peer (uWebSockets inside): every socket subscribes to one topic; a text frame
// starting with "b" is published to it (publish skips the sender), anything else is echoed.
// Usage: bun bun-server.js PORT
const port = Number(process.argv[2]);
Bun.serve({
  hostname: '127.0.0.1',
  port,
  fetch(req, server) {
    if (server.upgrade(req)) return undefined;
    return new Response('not found', { status: 404 });
  },
  websocket: {
    perMessageDeflate: false,
    idleTimeout: 0,
    open(ws) { ws.subscribe('all'); },
    message(ws, msg) {
      const first = typeof msg === 'string' ? msg.charCodeAt(0) : msg[0];
      if (first === 0x62) ws.publish('all', msg); else ws.send(msg);
    },
  },
});
console.log(`listening on http://127.0.0.1:${port}`);
