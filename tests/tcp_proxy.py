"""A small TCP proxy on loopback for tests: forward, refuse, or stall.

Sits between s3pyfs and the S3 server so a test can take the endpoint away
(`refuse`: nothing listens, connections are refused), make it hang (`stall`:
connections are accepted and never answered), and bring it back (`forward`),
all on the same port.  Threads only; bounded by the test's lifetime.
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.mode = "refuse"
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.bytes_down = 0          # bytes sent from the server to the client, all connections
        self.bytes_up = 0            # bytes sent from the client to the server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def forward(self) -> None:
        self._set("forward")

    def stall(self) -> None:
        self._set("stall")

    def refuse(self) -> None:
        self._set("refuse")

    def _set(self, mode: str) -> None:
        self._close_all()
        self.mode = mode
        if mode == "refuse":
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener, mode), daemon=True).start()

    def _accept(self, listener: socket.socket, mode: str) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._track(client)
            if mode == "forward":
                self._forward(client)

    def _track(self, sock: socket.socket) -> None:
        """Remember a socket so that a mode change or close() shuts it."""
        with self._lock:
            self._conns.append(sock)

    def _forward(self, client: socket.socket) -> None:
        """Serve one accepted connection in forward mode (subclasses: fault_proxy.py)."""
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self._track(upstream)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b, b is client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    if downstream:
                        self.bytes_down += len(data)
                    else:
                        self.bytes_up += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _close_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)   # wakes the thread blocked in accept()
            except OSError:
                pass
            listener.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._close_all()
