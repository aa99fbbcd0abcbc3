"""HEADs and ranged GETs on trio sockets, a GET body received straight into one buffer.

Responsibility: the HTTP/1.1 side of s3lean.py.  botocore/aiohttp cost 1.4-2.2 s
of CPU per GiB (chunks received, queued, joined, bridged back from the asyncio
thread) and about 1 ms per HEAD; a plain HTTP/1.1 request on a trio socket,
a GET body received with `recv_into` a preallocated bytearray, costs a
fraction of it.  `LeanHTTP` sends a HEAD or a GET signed by `sign` (s3sign.py:
on the trio thread, with the client's own auth class and credentials) over a
keep-alive connection of its own pool.
Invariants:
  * A GET answer is all of the bytes asked for or an exception, never fewer:
    a body must have its Content-Length (or complete chunked framing), and a
    connection closed mid-body is `Truncated` (s3client tries again).
  * A HEAD answer is its status and headers, never a body: none follows a HEAD
    answer, whatever its Content-Length says; bytes after the headers close
    the connection.
  * GETs: only 200/206 are answered here; 412 (the pinned ETag no longer
    holds) is `Changed`; anything else (redirect, 4xx, 5xx) returns
    `FALLBACK` and the caller sends the request through botocore, which
    retries and reports errors as usual.  A 403 (to either method) also
    calls `denied()` (s3sign.py drops its credentials snapshot).
  * `FALLBACK` too when no signature is given (URL not learnt yet) or no
    connection can be made.
  * A connection goes back to the pool only after its whole answer was read
    and the server did not ask to close it; a pooled connection that fails
    before any byte of the answer arrived (closed while idle) is retried once
    on a fresh connection.  At most `max_idle` idle connections are kept.
  * Plain http bodies are received with `recv_into` into the result buffer
    (one copy: kernel -> buffer); https goes through trio.SSLStream (one more
    copy).  No deadline here: the caller's `request_timeout` bounds each call.
  * Never used through a proxy: with HTTP(S)_PROXY set for the endpoint
    (and no NO_PROXY match) every request goes the botocore way, which honours it.
  * Header values are decoded as latin-1 (every byte is one character, no
    decoding error); answer headers longer than 64 KiB are `Truncated`.
  * Runs on the trio thread only; `close()` closes every pooled connection.
"""

from __future__ import annotations

import collections
import ssl
import urllib.request
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import trio

from . import buffers

FALLBACK = object()
_HEAD_MAX = 64 * 1024
_RECV = 1024 * 1024

Sign = Callable[[str, str, dict], Awaitable["tuple[str, dict] | None"]]   # (method, key, headers)


class Changed(Exception):
    """412: the object no longer has the ETag the GET was pinned to."""


class Truncated(Exception):
    """The answer ended (connection closed or broken) before all of its body arrived."""


class _Conn:
    __slots__ = ("stream", "sock", "pending", "reused")

    def __init__(self, stream, sock) -> None:
        self.stream = stream          # trio stream (SSLStream for https)
        self.sock = sock              # trio socket for recv_into (plain http), else None
        self.pending = b""            # bytes received past the previous answer (never, in practice)
        self.reused = False

    async def recv(self, size: int) -> bytes:
        if self.pending:
            data, self.pending = self.pending[:size], self.pending[size:]
            return data
        if self.sock is not None:
            return await self.sock.recv(size)
        return await self.stream.receive_some(size)

    async def recv_into(self, view: memoryview) -> int:
        if self.pending:
            n = min(len(view), len(self.pending))
            view[:n] = self.pending[:n]
            self.pending = self.pending[n:]
            return n
        if self.sock is not None:
            return await self.sock.recv_into(view)
        data = await self.stream.receive_some(len(view))
        view[:len(data)] = data
        return len(data)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        else:
            try:
                self.stream.transport_stream.socket.close()
            except Exception:      # noqa: BLE001
                pass


class LeanHTTP:
    def __init__(self, sign: Sign, *, verify_tls: bool = True, max_idle: int = 32,
                 connect_timeout: float = 5.0, denied: Callable[[], None] = lambda: None):
        self._sign = sign
        self._denied = denied
        self._verify = verify_tls
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout
        self._ssl: ssl.SSLContext | None = None
        self.connections_made = 0     # for tests: keep-alive reuse is observable
        self.answers: collections.Counter[tuple[str, int]] = collections.Counter()   # (method, status)
        self._direct: dict[tuple[str, str], bool] = {}   # (scheme, host) -> no proxy configured for it
        self.closed = False

    # ---------------------------------------------------------------- pool
    async def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        with trio.fail_after(self._connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
        stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
        self.connections_made += 1
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
                if not self._verify:
                    self._ssl.check_hostname = False
                    self._ssl.verify_mode = ssl.CERT_NONE
            tls = trio.SSLStream(stream, self._ssl, server_hostname=host, https_compatible=True)
            with trio.fail_after(self._connect_timeout):
                await tls.do_handshake()
            return _Conn(tls, None)
        return _Conn(stream, stream.socket)

    def _give_back(self, where, conn: _Conn) -> None:
        idle = self._idle.setdefault(where, [])
        if self.closed or len(idle) >= self._max_idle:
            conn.close()
            return
        conn.reused = True
        idle.append(conn)

    def close(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    def _is_direct(self, scheme: str, host: str) -> bool:
        known = self._direct.get((scheme, host))
        if known is None:
            proxies = urllib.request.getproxies()
            known = self._direct[(scheme, host)] = (scheme not in proxies
                                                    or bool(urllib.request.proxy_bypass(host)))
        return known

    # ---------------------------------------------------------------- requests
    async def get(self, key: str, start: int, end: int, etag: str | None = None):
        """(bytearray of bytes [start, end), answer headers) or FALLBACK.

        The buffer is shorter only when the object ends before `end` (its
        Content-Range says so)."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["If-Match"] = f'"{etag}"'
        return await self._request("GET", key, headers, end - start)

    async def head(self, key: str):
        """(status, answer headers) of a HEAD of `key`, or FALLBACK."""
        return await self._request("HEAD", key, {}, 0)

    async def _request(self, method: str, key: str, headers: dict[str, str], wanted: int):
        signed = await self._sign(method, key, headers)
        if signed is None:
            return FALLBACK
        url, sent_headers = signed
        parts = urlsplit(url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        where = (scheme, parts.hostname or "", port)
        if not self._is_direct(scheme, where[1]):
            return FALLBACK            # a proxy is configured (HTTP(S)_PROXY): botocore uses it
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in sent_headers.items() if name.lower() != "host"]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for _ in range(2):
            idle = self._idle.get(where)
            if idle:
                conn = idle.pop()
            else:
                try:
                    conn = await self._connect(*where)
                except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError):
                    return FALLBACK
            try:
                if method == "HEAD":
                    return await self._exchange_head(where, conn, request)
                return await self._exchange(where, conn, request, wanted)
            except _StaleConnection:
                conn.close()             # closed by the server while idle: once more, fresh
                continue
            except BaseException:
                conn.close()
                raise
        return FALLBACK

    async def _answer(self, method: str, conn: _Conn, request: bytes):
        """Send `request`, read the answer's status line and headers."""
        try:
            await conn.send(request)
            status, headers, rest = await self._head(conn)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, _Ended) as exc:
            if conn.reused:
                raise _StaleConnection() from exc
            raise Truncated(f"connection failed before the answer: {exc}") from None
        self.answers[(method, status)] += 1
        if status == 403:
            self._denied()
        return status, headers, rest

    async def _exchange_head(self, where, conn: _Conn, request: bytes):
        status, headers, rest = await self._answer("HEAD", conn, request)
        if rest or headers.get("connection", "").lower() == "close":
            conn.close()               # no body follows a HEAD answer: anything more is garbage
        else:
            self._give_back(where, conn)
        return status, headers

    async def _exchange(self, where, conn: _Conn, request: bytes, wanted: int):
        status, headers, rest = await self._answer("GET", conn, request)
        conn.pending = rest
        keep = headers.get("connection", "").lower() != "close"
        if status not in (200, 206):
            small = status in (304, 412) or int(headers.get("content-length", "-1")) in range(0, _HEAD_MAX)
            if small and keep and "content-length" in headers:
                await self._body_into(conn, bytearray(int(headers["content-length"])))
                self._give_back(where, conn)
            else:
                conn.close()
            if status == 412:
                raise Changed(headers.get("x-amz-request-id", ""))
            return FALLBACK
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                conn.close()
                raise Truncated(f"bad Content-Length {headers['content-length'][:40]!r}") from None
            if length > wanted:        # the range was not honoured: botocore's way
                conn.close()
                return FALLBACK
            body = buffers.take(length)      # a reused part buffer: no zero-fill
            await self._body_into(conn, body)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._chunked(conn)
        else:
            conn.close()               # body delimited by close: not worth supporting
            return FALLBACK
        if len(body) > wanted:
            conn.close()
            return FALLBACK
        if keep:
            self._give_back(where, conn)
        else:
            conn.close()
        return body, headers

    async def _head(self, conn: _Conn):
        data = b""
        while True:
            chunk = await conn.recv(_HEAD_MAX)
            if not chunk:
                raise _Ended("connection closed before the answer's headers")
            data += chunk
            end = data.find(b"\r\n\r\n")
            if end > _HEAD_MAX or (end < 0 and len(data) > _HEAD_MAX):
                raise Truncated("answer headers too long")
            if end >= 0:
                break
        lines = data[:end].decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise Truncated(f"not an HTTP answer: {lines[0][:80]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, data[end + 4:]

    async def _body_into(self, conn: _Conn, body: bytearray) -> None:
        view = memoryview(body)
        got, size = 0, len(body)
        try:
            while got < size:
                n = await conn.recv_into(view[got:min(size, got + _RECV)])
                if n == 0:
                    raise Truncated(f"connection closed after {got} of {size} body bytes")
                got += n
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Truncated(f"connection broken after {got} of {size} body bytes: {exc}") from None
        finally:
            view.release()

    async def _chunked(self, conn: _Conn) -> bytearray:
        body = bytearray()
        buf = b""

        async def more() -> None:
            nonlocal buf
            chunk = await conn.recv(_RECV)
            if not chunk:
                raise Truncated("connection closed inside a chunked body")
            buf += chunk
        try:
            while True:
                while b"\r\n" not in buf:
                    await more()
                line, _, buf = buf.partition(b"\r\n")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while True:           # trailers up to the blank line
                        while b"\r\n" not in buf:
                            await more()
                        line, _, buf = buf.partition(b"\r\n")
                        if not line:
                            conn.pending = buf
                            return body
                while len(buf) < size + 2:
                    await more()
                body += buf[:size]
                buf = buf[size + 2:]
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Truncated(f"connection broken inside a chunked body: {exc}") from None
        except ValueError:
            raise Truncated("bad chunk size in a chunked body") from None


class _Ended(Exception):
    pass


class _StaleConnection(Exception):
    pass
