"""The HTTP/1.1 transport against real loopback sockets that answer with scripted bytes: every body framing,
connection reuse and closing, timeouts, proxies (plain and CONNECT) and refused header injection.

The OpenAI protocol on top of it is tested in test_openai_runner.py against tests/fakeserver.py."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections.abc import Awaitable, Callable

import pytest

from fakeserver import FakeOpenAI
from runners.test_openai_runner import TEST_CA, tls_front
from tunebench.runners.transport import (
    CertificateError,
    Transport,
    TransportError,
    environment_proxy,
    request_head,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request: (head, body) with a Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def scripted(*responses: bytes, close_after: bool = False) -> tuple[Handler, list[bytes], list[int]]:
    """A handler answering successive requests (over all connections) with ``responses``; it records the
    request heads and counts connections."""
    heads: list[bytes] = []
    connections = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        try:
            while True:
                head, _ = await read_request(reader)
                heads.append(head)
                writer.write(responses[min(len(heads), len(responses)) - 1])
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle, heads, connections


def exchange(handler: Handler, *bodies: bytes, limit: int = 4, timeout_s: float = 5.0,
             between: float = 0.0) -> list[object]:
    """Start a server with ``handler``, POST each body in turn over one Transport; results or exceptions."""

    async def main() -> list[object]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = Transport(f"http://127.0.0.1:{port}/v1/x", limit=limit, timeout_s=timeout_s)
        head = request_head("POST", "/v1/x", {"host": f"127.0.0.1:{port}"})
        results: list[object] = []
        try:
            for body in bodies:
                try:
                    results.append(await transport.post(head, body))
                except Exception as exc:
                    results.append(exc)
                await asyncio.sleep(between)
        finally:
            transport.close()
            server.close()
        return results

    return asyncio.run(main())


async def post_failure(transport: Transport, host: str = "x") -> Exception:
    """POST an empty body to ``/`` and return the exception it must raise; the transport is closed after."""
    try:
        await transport.post(request_head("POST", "/", {"host": host}), b"")
    except Exception as exc:
        return exc
    finally:
        transport.close()
    raise AssertionError("the request succeeded")


def ok(body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


# -- framing ---------------------------------------------------------------------------------------------------


def test_content_length_bodies_over_one_kept_alive_connection():
    handle, heads, connections = scripted(ok(b'{"a": 1}'), ok(b'{"b": 2}', "X-Thing: yes"))
    first, second = exchange(handle, b"one", b"two")
    assert (first.status, first.body) == (200, b'{"a": 1}')
    assert (second.body, second.headers["x-thing"]) == (b'{"b": 2}', "yes")
    assert connections == [1]
    assert heads[0].startswith(b"POST /v1/x HTTP/1.1\r\n") and b"content-length: 3\r\n" in heads[0]


def test_chunked_body_with_extensions_and_trailers():
    body = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4;name=value\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n")
    (response,) = exchange(scripted(body)[0], b"x")
    assert response.body == b"Wikipedia in \r\n\r\nchunks."


def test_chunked_body_split_across_many_writes():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        for i in range(len(raw)):  # one byte at a time: every parser state sees a partial buffer
            writer.write(raw[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    (response,) = exchange(handle, b"x")
    assert response.body == b"hello world"


def test_body_delimited_by_the_server_closing():
    handle, _, connections = scripted(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end",
                                      close_after=True)
    first, second = exchange(handle, b"x", b"y")
    assert first.body == second.body == b"until the end"
    assert connections == [2]  # such a connection cannot be reused


def test_connection_close_and_http_1_0_are_not_reused():
    """The server keeps its side open: only the client's reading of the headers decides not to reuse."""
    handle, _, connections = scripted(ok(b"1", "Connection: close"))
    exchange(handle, b"x", b"y")
    assert connections == [2]
    handle, _, connections = scripted(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n1")
    exchange(handle, b"x", b"y")
    assert connections == [2]
    handle, _, connections = scripted(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 1\r\n\r\n1")
    exchange(handle, b"x", b"y")
    assert connections == [1]


def test_interim_100_continue_is_skipped():
    (response,) = exchange(scripted(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"))[0], b"x")
    assert (response.status, response.body) == (200, b"final")


@pytest.mark.parametrize("encoding, encode", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send it
])
def test_compressed_bodies_are_decoded(encoding, encode):
    payload = b'{"text": "' + b"policyholder " * 200 + b'"}'
    (response,) = exchange(scripted(ok(encode(payload), f"Content-Encoding: {encoding}"))[0], b"x")
    assert response.body == payload


def test_error_statuses_are_returned_with_their_headers():
    (response,) = exchange(scripted(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\ncontent-length: 4"
                                    b"\r\n\r\nslow")[0], b"x")
    assert (response.status, response.headers["retry-after"], response.body) == (429, "3", b"slow")


# -- failures --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    (b"SMTP ready\r\n\r\n", "not an HTTP response"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n", "malformed Content-Length"),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-5\r\nabc\r\n", "malformed chunk size"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed response header"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part", "closed the connection before the response"),
])
def test_garbled_or_truncated_responses_are_transport_errors(raw, message):
    (error,) = exchange(scripted(raw, close_after=True)[0], b"x")
    assert isinstance(error, TransportError)
    assert message in str(error)


def test_a_silent_server_times_out_and_its_connection_is_dropped():
    answered = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if not answered:
            answered.append(1)
            await asyncio.sleep(2)  # silent past the timeout
        writer.write(ok(b"late"))
        await writer.drain()
        writer.close()

    error, response = exchange(handle, b"x", b"y", timeout_s=0.3)
    assert isinstance(error, TimeoutError)
    assert response.body == b"late"  # on a new connection: the timed-out one carried a stale answer


def test_refused_connection_is_a_transport_error():
    async def main() -> Exception:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        return await post_failure(Transport(f"http://127.0.0.1:{port}/", limit=1, timeout_s=2))

    assert isinstance(asyncio.run(main()), TransportError)


def test_an_idle_connection_the_server_closed_is_not_reused():
    handle, _, connections = scripted(ok(b"1"), close_after=True)  # closes after answering, without saying so
    first, second = exchange(handle, b"x", b"y", between=0.1)
    assert first.body == second.body == b"1"
    assert connections == [2]


def test_never_more_connections_than_the_limit():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                await asyncio.sleep(0.01)
                writer.write(ok(b"1"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    counted = []

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = Transport(f"http://127.0.0.1:{port}/", limit=3, timeout_s=5)
        head = request_head("POST", "/", {"host": "x"})
        await asyncio.gather(*(transport.post(head, b"") for _ in range(30)))
        counted.append(len(transport._all))
        transport.close()
        server.close()

    asyncio.run(main())
    assert counted == [3]


def test_header_injection_is_refused():
    with pytest.raises(ValueError, match="line break"):
        request_head("POST", "/", {"x-evil": "a\r\nhost: elsewhere"})
    with pytest.raises(ValueError, match="line break"):
        request_head("POST", "/", {"x-evil\r\nhost": "a"})


# -- proxies -----------------------------------------------------------------------------------------------------


def test_environment_proxy_honours_no_proxy(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert environment_proxy("https", "api.openai.com") is None
    monkeypatch.setenv("https_proxy", "proxy.corp:3128")
    monkeypatch.setenv("no_proxy", "localhost,.internal")
    assert environment_proxy("https", "api.openai.com") == "http://proxy.corp:3128"
    assert environment_proxy("https", "llm.internal") is None
    assert environment_proxy("http", "api.openai.com") is None


def test_https_through_a_connect_proxy_with_credentials(tmp_path, monkeypatch):
    """CONNECT to the proxy (with Proxy-Authorization), then TLS end to end with the real endpoint."""
    (tmp_path / "ca.pem").write_text(TEST_CA)
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    connects: list[bytes] = []

    async def main() -> object:
        with FakeOpenAI() as backend:
            front = await tls_front(backend.port, tmp_path)
            front_port = front.sockets[0].getsockname()[1]

            async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                head = await reader.readuntil(b"\r\n\r\n")
                connects.append(head)
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", front_port)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

                async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                    try:
                        while data := await r.read(65536):
                            w.write(data)
                            await w.drain()
                    except ConnectionError:
                        pass
                    finally:
                        w.close()

                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

            proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
            proxy_port = proxy_server.sockets[0].getsockname()[1]
            transport = Transport(f"https://127.0.0.1:{front_port}/v1/chat/completions", limit=1, timeout_s=5,
                                  ssl_context=context, proxy=f"http://user:p%40ss@127.0.0.1:{proxy_port}")
            head = request_head("POST", "/v1/chat/completions",
                                {"host": transport.authority, "content-type": "application/json"})
            body = b'{"model": "m", "messages": [{"role": "user", "content": "via tunnel"}]}'
            try:
                return [await transport.post(head, body) for _ in range(2)]
            finally:
                transport.close()
                proxy_server.close()
                front.close()

    first, second = asyncio.run(main())
    assert first.status == 200 and b"echo: via tunnel" in first.body and second.status == 200
    (connect,) = connects  # one tunnel, reused for the second request
    assert connect.startswith(b"CONNECT 127.0.0.1:")
    assert b"proxy-authorization: Basic dXNlcjpwQHNz" in connect  # user:p@ss


def test_a_proxy_refusing_the_tunnel_is_a_transport_error(tmp_path):
    async def main() -> object:
        async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(proxy, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = Transport("https://api.example.test/v1/x", limit=1, timeout_s=5,
                              proxy=f"http://127.0.0.1:{port}")
        try:
            return await post_failure(transport, "api.example.test")
        finally:
            server.close()

    error = asyncio.run(main())
    assert isinstance(error, TransportError) and "HTTP 407" in str(error)


def test_untrusted_certificate_is_a_certificate_error(tmp_path):
    async def main() -> object:
        with FakeOpenAI() as backend:
            front = await tls_front(backend.port, tmp_path)
            port = front.sockets[0].getsockname()[1]
            transport = Transport(f"https://127.0.0.1:{port}/", limit=1, timeout_s=5,
                                  ssl_context=ssl.create_default_context())
            try:
                return await post_failure(transport)
            finally:
                front.close()

    assert isinstance(asyncio.run(main()), CertificateError)
