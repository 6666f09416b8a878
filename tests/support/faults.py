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
