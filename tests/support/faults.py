"""Servers that misbehave on purpose, on 127.0.0.1: one that accepts connections and never answers."""

from __future__ import annotations

import socket
import threading


class SilentServer:
    """A TCP server that accepts every connection, reads what it is sent and never answers (a hung
    S3 gateway, a stopped process behind a live load balancer)."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(128)
        self.endpoint = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections.append(connection)  # kept open, never answered

    def close(self) -> None:
        self._closed = True
        self.socket.close()
        for connection in self.connections:
            connection.close()

    def __enter__(self) -> "SilentServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


FAULTS = ("drop", "delay", "500", "503", "applied-reply-dropped")


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 server that, for a seeded fraction of requests:

    * ``drop``: closes the connection without forwarding or answering;
    * ``delay``: waits up to ``max_delay`` s, then forwards;
    * ``500`` / ``503``: answers an S3 ``InternalError`` / ``SlowDown`` without forwarding;
    * ``applied-reply-dropped``: forwards a PUT or POST (the server applies it), then closes the
      connection instead of answering: the client cannot know its write happened.

    Requests are forwarded byte for byte with their own ``Host`` header, so SigV4 signatures hold.
    ``counts`` says how many requests met each fault (and ``ok``).
    """

    def __init__(self, upstream: str, rates: dict[str, float], seed: int = 0, max_delay: float = 0.3) -> None:
        import asyncio
        import random
        from collections import Counter

        unknown = set(rates) - set(FAULTS)
        if unknown or sum(rates.values()) > 1:
            raise ValueError(f"bad fault rates {rates}")
        self.upstream, self.rates, self.max_delay = upstream.rstrip("/"), rates, max_delay
        self.random = random.Random(seed)
        self.counts: Counter = Counter()
        self.requests: Counter = Counter()  # by method and kind of object (records, aliases, ...)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        if not self._ready.wait(30):  # the proxy signals when it listens
            raise RuntimeError("the fault proxy did not start listening within 30 s")

    def _draw(self, method: str) -> str:
        u, edge = self.random.random(), 0.0
        for fault, rate in self.rates.items():
            edge += rate
            if u < edge and (fault != "applied-reply-dropped" or method in ("PUT", "POST")):
                return fault
        return "ok"

    def _serve(self) -> None:
        import asyncio

        from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

        hop = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            fault = self._draw(request.method)
            self.counts[fault] += 1
            what = "list" if "list-type" in request.query_string else request.path.split("/")[3:4]
            self.requests[f"{request.method} {what}"] += 1
            if fault == "drop":
                request.transport.abort()
                return web.Response(status=500)
            if fault in ("500", "503"):
                code = "InternalError" if fault == "500" else "SlowDown"
                return web.Response(status=int(fault), content_type="application/xml",
                                    text=f"<Error><Code>{code}</Code><Message>injected</Message></Error>")
            if fault == "delay":
                await asyncio.sleep(self.random.uniform(0, self.max_delay))
            headers = [(k, v) for k, v in request.headers.items() if k.lower() not in hop]
            async with self.session.request(request.method, self.upstream + request.raw_path, headers=headers,
                                            data=body if body else None, allow_redirects=False,
                                            skip_auto_headers=("User-Agent", "Content-Type", "Accept",
                                                               "Accept-Encoding")) as upstream:
                payload = await upstream.read()
                if fault == "applied-reply-dropped":
                    request.transport.abort()
                    return web.Response(status=500)
                response = web.Response(status=upstream.status, body=payload)
                for k, v in upstream.headers.items():
                    if k.lower() not in hop and k.lower() != "content-length":
                        response.headers.add(k, v)
                if request.method == "HEAD" and "Content-Length" in upstream.headers:
                    response.headers["Content-Length"] = upstream.headers["Content-Length"]
                return response

        async def start() -> None:
            self.session = ClientSession(connector=TCPConnector(limit=256), auto_decompress=False,
                                         timeout=ClientTimeout(total=60))
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("*", "/{tail:.*}", handle)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            self.endpoint = f"http://127.0.0.1:{port}"
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def close(self) -> None:
        import asyncio

        async def stop() -> None:
            await self.session.close()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
