// socket.io peer: "echo" answers with an ack, "send" emits back to the sender, "broadcast"
// emits to every other socket. WebSocket transport only; engine.io pings every 60 s so that
// the load generator never has to answer one. Usage: node sio-server.js PORT
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2]);
const server = http.createServer();
const io = new Server(server, {
  transports: ['websocket'],
  pingInterval: 60000,
  pingTimeout: 60000,
  perMessageDeflate: false,
  serveClient: false,
});
io.on('connection', (socket) => {
  socket.on('echo', (x, ack) => { if (typeof ack === 'function') ack(x); });
  socket.on('send', (x) => socket.emit('send', x));
  socket.on('broadcast', (x) => socket.broadcast.emit('send', x));
});
server.listen(port, '127.0.0.1', 4096, () => console.log(`listening on http://127.0.0.1:${port}`));
