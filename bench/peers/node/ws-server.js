// Node `ws` peer: a text frame starting with "b" goes to every other client, anything else
// is echoed back. Usage: node ws-server.js PORT
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({ server, perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (data[0] === 0x62) {
      for (const c of wss.clients) if (c !== ws) c.send(data, { binary: isBinary });
    } else {
      ws.send(data, { binary: isBinary });
    }
  });
});
server.listen(port, '127.0.0.1', 4096, () => console.log(`listening on http://127.0.0.1:${port}`));
