"""The HTTP seam of the ``openai`` runner: a small HTTP/1.1 client for JSON APIs on asyncio protocols.

Why not aiohttp: at the request rates this harness runs (hundreds to thousands of requests per second from one
process on two cores), the client's own CPU per request decides how close a run gets to the latency bound.
Against the loopback fake server at 50 ms, a bare aiohttp client spends 1.06 × the bound with 16 requests in
flight and 1.10 × with 64; this client 1.03 × and 1.05 × (``docs/benchmarks.md``). It also imports in ~10 ms
instead of ~130 ms. It does only what an OpenAI-compatible endpoint needs, and all of it is tested against real
sockets (``tests/runners/test_transport.py``, ``tests/runners/test_openai_runner.py``).

Invariants:
- One :class:`Transport` serves one origin (scheme, host, port) on one event loop. Connections are kept alive
  and reused, most recently used first; never more than ``limit`` are open (callers beyond it wait, without a
  timeout: waiting for our own concurrency limit is not a network timeout). A connection that the server
  closed while idle is dropped, never reused.
- Requests go out as one write (head and body). Responses are read with Content-Length, chunked
  transfer-encoding, or until the server closes; ``1xx`` interim responses are skipped; gzip/deflate bodies are
  decoded. The server's ``Connection: close`` (or HTTP/1.0 without keep-alive) closes the connection after the
  response.
- Timeouts are per operation, like a socket timeout: connecting, or a silence of ``timeout_s`` while a response
  is awaited, raises ``TimeoutError``. Anything else that goes wrong on the wire (refused, reset, closed
  mid-response, a response that is not HTTP) raises :class:`TransportError`; an untrusted TLS certificate
  raises :class:`CertificateError`. A connection that saw any error, or whose request was cancelled, is closed.
- Proxies come from the environment (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), read once when the
  transport is made: plain HTTP through an HTTP proxy with the absolute URL as the request target; HTTPS through
  a ``CONNECT`` tunnel. Credentials in the proxy URL are sent as ``Proxy-Authorization: Basic``.
- Header names and values are checked once for CR/LF (no header injection) by :func:`request_head`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import zlib
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = ["CertificateError", "HttpResponse", "Transport", "TransportError", "environment_proxy", "request_head"]

_MAX_HEAD = 64 * 1024
_KEEP_ALIVE_IDLE_S = 15.0
"""An idle connection older than this is closed instead of reused: servers drop idle keep-alive connections
(uvicorn after 5 s, nginx 75 s) and a reused half-dead one would cost a retry."""


class TransportError(ConnectionError):
    """The connection failed or the bytes received are not an HTTP response."""


class CertificateError(TransportError):
    """The server's TLS certificate is not trusted (retrying cannot help)."""


class HttpResponse(NamedTuple):
    status: int
    headers: dict[str, str]
    """Lower-cased names; the last value of a repeated header."""
    body: bytes


def request_head(method: str, target: str, headers: Mapping[str, str]) -> bytes:
    """The request line and headers, without Content-Length and the blank line; CR/LF in a header is refused."""
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers.items():
        if any(c in name for c in "\r\n:") or not name.strip() or "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} contains a line break or colon")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def environment_proxy(scheme: str, host: str) -> str | None:
    """The proxy URL the environment names for ``scheme://host``, or None (``NO_PROXY`` honoured)."""
    if not any(k.lower().endswith("_proxy") for k in os.environ):
        return None  # the common case: urllib.request (~25 ms to import) is not needed
    import urllib.request

    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


class _Parser:
    """Incremental HTTP/1.1 response parser: feed bytes, get a response when one is complete."""

    __slots__ = ("buffer", "chunks", "done", "head_only", "headers", "mode", "remaining", "status", "version")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.reset()

    def reset(self, head_only: bool = False) -> None:
        self.head_only = head_only
        self.status = 0
        self.headers: dict[str, str] = {}
        self.version = b""
        self.mode = "head"  # head → length | chunked | eof → done
        self.remaining = 0
        self.chunks: list[bytes] = []
        self.done = False

    def feed(self, data: bytes) -> None:
        self.buffer += data
        self._advance()

    def _advance(self) -> None:
        buf = self.buffer
        while not self.done:
            if self.mode == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise TransportError("response head larger than 64 KiB")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._head(head)
            elif self.mode == "length":
                take = min(self.remaining, len(buf))
                if take:
                    self.chunks.append(bytes(buf[:take]))
                    del buf[:take]
                    self.remaining -= take
                if self.remaining:
                    return
                self.done = True
            elif self.mode == "chunked":
                if self.remaining:  # inside a chunk: its data then CRLF
                    if len(buf) < self.remaining + 2:
                        return
                    if buf[self.remaining : self.remaining + 2] != b"\r\n":
                        raise TransportError("malformed chunked body")
                    self.chunks.append(bytes(buf[: self.remaining]))
                    del buf[: self.remaining + 2]
                    self.remaining = 0
                    continue
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise TransportError("malformed chunked body")
                    return
                size_text = bytes(buf[:line_end]).split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    size = -1
                if size < 0 or not size_text.isalnum():  # int() would also take "-5", "+5" and "0x5"
                    raise TransportError(f"malformed chunk size {size_text[:20]!r}")
                if size:
                    del buf[: line_end + 2]
                    self.remaining = size
                    continue
                trailer_end = buf.find(b"\r\n\r\n", line_end) if buf[line_end : line_end + 4] != b"\r\n\r\n" \
                    else line_end
                if trailer_end < 0:
                    return
                del buf[: trailer_end + 4]
                self.done = True
            else:  # "eof": everything until the server closes
                if buf:
                    self.chunks.append(bytes(buf))
                    buf.clear()
                return

    def _head(self, head: bytes) -> None:
        status_line, _, rest = head.partition(b"\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise TransportError(f"not an HTTP response: {status_line[:60]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in rest.split(b"\r\n") if rest else ():
            name, sep, value = line.partition(b":")
            if not sep:
                raise TransportError(f"malformed response header {line[:60]!r}")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        if 100 <= status < 200:  # interim (100 Continue, 103 Early Hints): the real response follows
            return
        self.status, self.headers, self.version = status, headers, parts[0]
        if self.head_only:  # the answer to CONNECT: what follows belongs to the tunnel
            self.mode, self.done = "tunnel", True
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.mode = "chunked"
        elif "content-length" in headers:
            try:
                self.remaining = int(headers["content-length"])
            except ValueError:
                raise TransportError(f"malformed Content-Length {headers['content-length'][:20]!r}") from None
            if self.remaining < 0:
                raise TransportError("negative Content-Length")
            self.mode = "length"
            if not self.remaining:
                self.done = True
        elif status in (204, 304):
            self.done = True
        else:
            self.mode = "eof"

    def finish_at_eof(self) -> bool:
        """The server closed: whether that completes the response (a body delimited by the close)."""
        if self.mode == "eof":
            self.done = True
        return self.done

    def response(self) -> HttpResponse:
        body = b"".join(self.chunks)
        encoding = self.headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate") and body:
            try:
                body = zlib.decompress(body, 47 if encoding != "deflate" else zlib.MAX_WBITS)
            except zlib.error:
                try:  # raw deflate, as some servers send it
                    body = zlib.decompress(body, -zlib.MAX_WBITS)
                except zlib.error as exc:
                    raise TransportError(f"cannot decode the {encoding} body: {exc}") from None
        return HttpResponse(self.status, self.headers, body)

    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.mode == "eof" or "close" in connection:
            return False
        return self.version != b"HTTP/1.0" or "keep-alive" in connection


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.parser = _Parser()
        self.waiter: asyncio.Future[HttpResponse] | None = None
        self.closed = False
        self.last_activity = 0.0
        self.idle_since = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        self.last_activity = self.loop.time()
        try:
            self.parser.feed(data)
        except TransportError as exc:
            self._fail(exc)
            return
        if self.parser.done:
            self._complete()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if exc is None and self.parser.finish_at_eof():
                self._complete()
            else:
                reason = f": {exc}" if exc else ""
                self._fail(TransportError(f"the server closed the connection before the response ended{reason}"))

    # -- one exchange
    async def exchange(self, data: bytes, *, head_only: bool = False) -> HttpResponse:
        assert self.transport is not None
        self.parser.reset(head_only)
        self.waiter = waiter = self.loop.create_future()
        self.last_activity = self.loop.time()
        self.timer = self.loop.call_at(self.last_activity + self.timeout_s, self._check_silence)
        self.transport.write(data)
        try:
            return await waiter
        except BaseException:
            self.close()  # cancelled or failed mid-exchange: what is left on the wire is unusable
            raise
        finally:
            self.waiter = None
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def _check_silence(self) -> None:
        self.timer = None
        silent_until = self.last_activity + self.timeout_s
        if self.loop.time() >= silent_until:
            self._fail(TimeoutError(f"no response byte for {self.timeout_s:g}s"))
        else:
            self.timer = self.loop.call_at(silent_until, self._check_silence)

    def _complete(self) -> None:
        waiter = self.waiter
        try:
            response = self.parser.response()
        except TransportError as exc:
            self._fail(exc)
            return
        if not self.parser.head_only and (not self.parser.keep_alive() or self.parser.buffer):
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, exc: BaseException) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def reusable(self, now: float) -> bool:
        return not self.closed and not self.transport.is_closing() and now - self.idle_since < _KEEP_ALIVE_IDLE_S


class Transport:
    """POSTs to one origin over pooled keep-alive connections (see the module docstring)."""

    def __init__(self, url: str, *, limit: int, timeout_s: float, ssl_context: ssl.SSLContext | None = None,
                 proxy: str | None = None) -> None:
        parts = urlsplit(url)
        self.secure = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.secure else 80)
        self.authority = (f"[{self.host}]" if ":" in self.host else self.host) + (
            "" if parts.port is None else f":{parts.port}")
        self.timeout_s = timeout_s
        self.ssl_context = (ssl_context or ssl.create_default_context()) if self.secure else None
        self.proxy = urlsplit(proxy) if proxy else None
        self.proxy_auth: str | None = None
        if self.proxy is not None and self.proxy.username is not None:
            token = base64.b64encode(f"{unquote(self.proxy.username)}:{unquote(self.proxy.password or '')}"
                                     .encode()).decode()
            self.proxy_auth = f"Basic {token}"
        self.limit = max(1, limit)
        self._slots = asyncio.Semaphore(self.limit)
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def through_http_proxy(self) -> bool:
        """Plain HTTP sent to a proxy: the request target is the absolute URL."""
        return self.proxy is not None and not self.secure

    async def post(self, head: bytes, body: bytes) -> HttpResponse:
        """Send ``head`` (from :func:`request_head`) with ``body``; the response, whatever its status."""
        data = b"%scontent-length: %d\r\n\r\n%s" % (head, len(body), body)
        async with self._slots:
            loop = asyncio.get_running_loop()
            conn = self._reuse(loop) or await self._connect(loop)
            try:
                return await conn.exchange(data)
            finally:
                if conn.closed:
                    self._all.discard(conn)
                else:
                    conn.idle_since = loop.time()
                    self._idle.append(conn)

    def _reuse(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        now = loop.time()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable(now):
                return conn
            conn.close()
            self._all.discard(conn)
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        self._loop = loop
        conn = _Connection(loop, self.timeout_s)
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.proxy is None:
                    await loop.create_connection(lambda: conn, self.host, self.port, ssl=self.ssl_context,
                                                 server_hostname=self.host if self.secure else None)
                else:
                    await self._connect_via_proxy(loop, conn)
        except TimeoutError:
            conn.close()
            raise TimeoutError(f"could not connect within {self.timeout_s:g}s") from None
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise CertificateError(exc.verify_message or str(exc)) from None
        except OSError as exc:
            conn.close()
            if isinstance(exc, TransportError):
                raise
            raise TransportError(str(exc) or type(exc).__name__) from None
        self._all.add(conn)
        return conn

    async def _connect_via_proxy(self, loop: asyncio.AbstractEventLoop, conn: _Connection) -> None:
        assert self.proxy is not None
        proxy_port = self.proxy.port or (443 if self.proxy.scheme == "https" else 80)
        proxy_ssl = ssl.create_default_context() if self.proxy.scheme == "https" else None
        if not self.secure:
            await loop.create_connection(lambda: conn, self.proxy.hostname, proxy_port, ssl=proxy_ssl)
            return
        # HTTPS through a proxy: CONNECT, read the proxy's answer on the same protocol, then TLS over the tunnel.
        transport, _ = await loop.create_connection(lambda: conn, self.proxy.hostname, proxy_port, ssl=proxy_ssl)
        headers = {"host": f"{self.host}:{self.port}"}
        if self.proxy_auth:
            headers["proxy-authorization"] = self.proxy_auth
        answer = await conn.exchange(request_head("CONNECT", f"{self.host}:{self.port}", headers) + b"\r\n",
                                     head_only=True)
        if answer.status != 200:
            raise TransportError(f"the proxy refused the tunnel to {self.host}:{self.port}: HTTP {answer.status}")
        conn.transport = await loop.start_tls(transport, conn, self.ssl_context, server_hostname=self.host)

    def close(self) -> None:
        """Close every connection (on their own loop; a finished loop's connections are just dropped)."""
        loop, self._loop = self._loop, None
        connections, self._all, self._idle = self._all, set(), []
        if loop is None or loop.is_closed():
            return
        for conn in connections:
            conn.close()
