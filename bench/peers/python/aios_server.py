"""aiosignalr peer for the tidings benchmark: the same hub as examples/benchhub.rs.

Usage: python aios_server.py PORT   (serves ws/sse/long polling at /hub)
"""

import asyncio
import sys

from aiosignalr.server import Hub, SignalRServer


class BenchHub(Hub):
    async def echo(self, x: str) -> str:
        return x

    async def send(self, x):
        await self.clients.caller.send("send", x)

    async def broadcast(self, x):
        await self.clients.others.send("send", x)


async def main() -> None:
    port = int(sys.argv[1])
    server = SignalRServer(BenchHub)
    host, bound = await server.serve("127.0.0.1", port, path="/hub")
    print(f"listening on http://{host}:{bound}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
