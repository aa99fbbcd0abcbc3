"""An HTTP-aware fault-injection proxy on loopback, for the "never lose data" tests.

Sits between s3pyfs (or any S3 client) and the real S3 server, understands
HTTP/1.1 requests and responses on keep-alive connections, and breaks chosen
requests on purpose.  It extends `tcp_proxy.TcpProxy`, so `refuse()`,
`stall()` and `forward()` work as there; in forward mode each connection is
served request by request:

    request head -> [Expect: 100-continue answered here] -> body
    (Content-Length or chunked) -> one rule may fire -> server -> response
    head + body -> the rule may damage it -> client

Faults (`Fault.kind`):
  reset_request   read the head and half of the body, then reset (RST) the connection
  reset_response  forward, send the response head and half the body, then reset
  short_body      forward, send the head with the full Content-Length, half the body, close
  corrupt         forward, flip a bit of one byte of the response body (random place)
  corrupt_request flip a bit of one byte of the request body (random place), then forward
  delay           forward, hold the response for `delay` seconds
  error500        answer 500 InternalError (S3 XML body) without asking the server
  slowdown        answer 503 SlowDown (S3 XML body) without asking the server

A rule fires for requests matching all its filters (method, a query
parameter name such as "uploadId", a request header such as "Range", a path
substring), for the next `times` of them (None: no limit), each with
probability `share` (seeded, so runs repeat).  Counters (`requests`,
`injected`, `Fault.hits`) let tests prove faults really happened.

Invariants: only the first matching rule with budget left fires; a request
no rule picks is forwarded byte for byte (apart from the Expect header);
every socket is tracked, so `refuse()`/`close()` end every connection.
Threads only; bounded by the test's lifetime.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import socket
import struct
import threading
import time
import urllib.parse

from tcp_proxy import TcpProxy

KINDS = ("reset_request", "reset_response", "short_body", "corrupt", "corrupt_request",
         "delay", "error500", "slowdown")
_ERRORS = {"error500": (500, "Internal Server Error", "InternalError",
                        "We encountered an internal error. Please try again."),
           "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate.")}
MAX_HEAD = 64 * 1024


@dataclasses.dataclass
class Fault:
    kind: str
    method: str | None = None          # e.g. "PUT"
    query: str | None = None           # a query parameter that must be present, e.g. "uploadId"
    header: str | None = None          # a request header that must be present, e.g. "Range"
    path: str | None = None            # a substring of the request path
    times: int | None = None           # fire for the next N matching requests; None: unlimited
    share: float = 1.0                 # probability of firing for a matching request
    delay: float = 0.0                 # seconds, for kind "delay"
    hits: int = 0                      # how many times it fired

    def matches(self, request: _Request) -> bool:
        return ((self.method is None or request.method == self.method.upper())
                and (self.query is None or self.query in request.query)
                and (self.header is None or self.header.lower() in request.headers)
                and (self.path is None or self.path in request.path)
                and (self.times is None or self.hits < self.times))


@dataclasses.dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]            # lower-case names
    head: bytes                        # as forwarded (without Expect)


class _Conn:
    """A socket with a read buffer: HTTP heads, exact lengths, lines, chunked bodies."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(262144)
        self._buf += data
        return bool(data)

    def read_head(self) -> bytes | None:
        """Bytes up to and including the blank line; None at a clean end of stream."""
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > MAX_HEAD:
                raise ConnectionError("head too long")
            if not self._fill():
                if self._buf:
                    raise ConnectionError("connection closed inside a head")
                return None
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def read_exact(self, size: int) -> bytes:
        while len(self._buf) < size:
            if not self._fill():
                raise ConnectionError(f"connection closed after {len(self._buf)} of {size} bytes")
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def read_line(self) -> bytes:
        while b"\r\n" not in self._buf:
            if not self._fill():
                raise ConnectionError("connection closed inside a line")
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line + b"\r\n"

    def read_chunked(self) -> bytes:
        """A chunked body, raw (sizes, data, trailers), as it is to be forwarded."""
        raw = []
        while True:
            line = self.read_line()
            raw.append(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            raw.append(self.read_exact(size + 2))
        while True:                    # trailers up to the empty line
            line = self.read_line()
            raw.append(line)
            if line == b"\r\n":
                return b"".join(raw)

    def read_to_end(self) -> bytes:
        while self._fill():
            pass
        data, self._buf = self._buf, b""
        return data


def _parse_headers(head: bytes) -> tuple[str, list[bytes], dict[str, str]]:
    lines = head.split(b"\r\n")[:-2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0].decode("latin-1"), lines, headers


def _read_body(conn: _Conn, headers: dict[str, str], until_close: bool = False) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return conn.read_chunked()
    if "content-length" in headers:
        return conn.read_exact(int(headers["content-length"]))
    return conn.read_to_end() if until_close else b""


def _flip(body: bytes, at: int) -> bytes:
    return body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1:]


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def error_response(kind: str, request_id: str, with_body: bool = True) -> bytes:
    """An S3 error answer (XML body as AWS sends it) for kind error500 or slowdown."""
    status, reason, code, message = _ERRORS[kind]
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>{request_id}</RequestId></Error>").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nx-amz-request-id: {request_id}\r\n\r\n").encode()
    return head + (body if with_body else b"")


class FaultProxy(TcpProxy):
    """HTTP proxy to (target_host, target_port) that injects `Fault`s; see the module doc."""

    def __init__(self, target_host: str, target_port: int, seed: int = 1):
        super().__init__(target_host, target_port)
        self.faults: list[Fault] = []
        self.requests: collections.Counter[str] = collections.Counter()   # by method
        self.injected: collections.Counter[str] = collections.Counter()   # by kind
        self.seen: list[tuple[str, str, str | None]] = []                 # (method, target, kind)
        self._rng = random.Random(seed)

    # ---------------------------------------------------------------- test API
    def add(self, kind: str, **filters) -> Fault:
        """Add a rule (see `Fault`); returns it so a test can read `hits`."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}")
        fault = Fault(kind, **filters)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Drop all rules (counters stay)."""
        with self._lock:
            self.faults = []

    def count(self, method: str | None = None, query: str | None = None, path: str | None = None) -> int:
        """Requests seen so far, optionally only of one method / with one query parameter /
        whose path holds `path`."""
        with self._lock:
            return sum(1 for m, target, _ in self.seen
                       if (method is None or m == method)
                       and (path is None or path in urllib.parse.urlsplit(target).path)
                       and (query is None or query in urllib.parse.parse_qs(
                           urllib.parse.urlsplit(target).query, keep_blank_values=True)))

    # ---------------------------------------------------------------- serving
    def _forward(self, client: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        down = _Conn(client)
        up: _Conn | None = None
        try:
            while True:
                request = self._read_request(down)
                if request is None:
                    return
                fault = self._pick(request)
                up = self._exchange(down, up, request, fault)
                if up is None:
                    return
        except (OSError, ValueError, ConnectionError):
            pass
        finally:
            client.close()
            if up is not None:
                up.sock.close()

    def _read_request(self, down: _Conn) -> _Request | None:
        head = down.read_head()
        if head is None:
            return None
        first, lines, headers = _parse_headers(head)
        method, target, _version = first.split(" ", 2)
        if headers.get("expect", "").lower() == "100-continue":
            down.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            lines = [line for line in lines if not line.lower().startswith(b"expect:")]
            head = b"\r\n".join(lines) + b"\r\n\r\n"
            del headers["expect"]
        split = urllib.parse.urlsplit(target)
        return _Request(method.upper(), split.path, urllib.parse.parse_qs(split.query, keep_blank_values=True),
                        headers, head)

    def _pick(self, request: _Request) -> Fault | None:
        with self._lock:
            self.requests[request.method] += 1
            chosen = None
            for fault in self.faults:
                if fault.matches(request) and self._rng.random() < fault.share:
                    fault.hits += 1
                    chosen = fault
                    break
            target = request.path + ("?" + urllib.parse.urlencode(request.query, doseq=True) if request.query else "")
            self.seen.append((request.method, target, chosen.kind if chosen else None))
            return chosen

    def _damaged(self, body: bytes) -> bytes:
        """`body` with one bit flipped at a random (seeded) place: each damage differs."""
        with self._lock:
            at = self._rng.randrange(len(body))
        return _flip(body, at)

    def _done(self, fault: Fault, applied: bool = True) -> None:
        """Count a fault that really happened; give the budget back when it could not apply."""
        with self._lock:
            if applied:
                self.injected[fault.kind] += 1
            else:
                fault.hits -= 1

    def _exchange(self, down: _Conn, up: _Conn | None, request: _Request, fault: Fault | None) -> _Conn | None:
        """One request/response; returns the upstream connection to keep, None to end."""
        kind = fault.kind if fault else None
        if kind == "reset_request":
            length = int(request.headers.get("content-length", "0"))
            down.read_exact(length // 2)
            self._done(fault)
            _reset(down.sock)
            return None
        body = _read_body(down, request.headers)
        if kind in _ERRORS:
            self._done(fault)
            rid = f"fault-{sum(self.requests.values())}"
            down.sock.sendall(error_response(kind, rid, with_body=request.method != "HEAD"))
            return up
        if kind == "corrupt_request":
            applied = len(body) > 1 and "content-length" in request.headers
            self._done(fault, applied)
            body = self._damaged(body) if applied else body
        if up is None:
            up = _Conn(socket.create_connection(self.target, timeout=60))
            self._track(up.sock)
        up.sock.sendall(request.head + body)
        status_head = up.read_head()
        while status_head is not None and status_head.split(b" ", 2)[1].startswith(b"1"):
            status_head = up.read_head()             # interim answers: not forwarded
        if status_head is None:
            raise ConnectionError("the server closed the connection")
        first, _lines, headers = _parse_headers(status_head)
        status = int(first.split(" ", 2)[1])
        no_body = request.method == "HEAD" or status in (204, 304)
        response_body = b"" if no_body else _read_body(up, headers, until_close=True)
        return self._answer(down, up, fault, status_head, headers, response_body)

    def _answer(self, down: _Conn, up: _Conn, fault: Fault | None, head: bytes,
                headers: dict[str, str], body: bytes) -> _Conn | None:
        kind = fault.kind if fault else None
        plain = "content-length" in headers and len(body) > 1
        if kind == "delay":
            self._done(fault)
            time.sleep(fault.delay)
        if kind in ("reset_response", "short_body", "corrupt"):
            self._done(fault, plain)
        if kind in ("reset_response", "short_body") and plain:
            down.sock.sendall(head + body[:len(body) // 2])
            if kind == "reset_response":
                _reset(down.sock)
            else:
                down.sock.shutdown(socket.SHUT_RDWR)
            return None
        if kind == "corrupt" and plain:
            body = self._damaged(body)
        down.sock.sendall(head + body)
        if headers.get("connection", "").lower() == "close" or not (
                "content-length" in headers or "chunked" in headers.get("transfer-encoding", "")):
            return None
        return up
