"""A real loopback server speaking the OpenAI chat-completions and completions protocol.

Tests and benchmarks start it with ``with FakeOpenAI(...) as server:`` and point runners at ``server.base_url``
(``http://127.0.0.1:PORT/v1``). It runs on its own asyncio loop in a background thread.

Invariants:
- It is real HTTP/1.1 over TCP with keep-alive (Content-Length bodies only, as every OpenAI client sends), written
  on a raw ``asyncio.Protocol`` so it serves thousands of requests per second at 0 ms latency.
- Replies are deterministic: the default is ``"echo: <last user message>"``; :func:`echo_by_model` makes the
  reply depend on the model name so base and tuned differ. Usage tokens are word counts.
- Faults are scripted either by request number (1-based, in arrival order over all connections) or by rules
  matching the last user message (and optionally the model); they cover 429 + Retry-After, 5xx, a hang longer
  than the client timeout, a dropped connection and malformed JSON.
- ``requests`` records every received request (method, path, query, lower-cased headers, parsed JSON body)
  unless ``record=False`` (benchmarks).

Run ``python tests/fakeserver.py --latency-ms 0`` to serve from a separate process (benchmarks that must not
share the GIL with the client); it prints the base URL and serves until interrupted.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

try:  # orjson is several times faster; the server works without it
    import orjson

    _dumps: Callable[[Any], bytes] = orjson.dumps
    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    _loads = json.loads

__all__ = ["FakeOpenAI", "Fault", "FaultRule", "Received", "echo", "echo_by_model"]

Reply = Callable[[str, str, dict[str, Any]], "str | dict[str, Any]"]
"""``reply(model, last_user_text, body)`` → the completion text, or a dict with ``text`` and optional
``finish_reason`` / ``prompt_tokens`` / ``completion_tokens``."""


def echo(model: str, text: str, body: dict[str, Any]) -> str:
    """The default reply: ``echo: <text>``, whatever the model."""
    return f"echo: {text}"


def echo_by_model(model: str, text: str, body: dict[str, Any]) -> str:
    """A model-dependent reply (``[model] <text>``), so a base and a tuned model give different outputs."""
    return f"[{model}] {text}"


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour. Build it with the class methods."""

    kind: str
    """``status`` (an HTTP error), ``hang``, ``drop``, ``malformed`` or ``no_choices``."""
    status: int = 200
    retry_after: str | None = None
    """Sent verbatim as the Retry-After header (seconds or an HTTP date)."""
    body: bytes | None = None
    seconds: float | None = None
    """For ``hang``: how long to hold the connection before closing it; ``None`` = until the server stops."""

    @classmethod
    def error(cls, status: int, *, retry_after: str | float | None = None, body: bytes | None = None) -> Fault:
        """An HTTP error response with an OpenAI-style JSON error body (or ``body`` verbatim)."""
        if body is None:
            body = _dumps({"error": {"message": f"fake error {status}", "type": "fake", "code": status}})
        ra = None if retry_after is None else str(retry_after)
        return cls("status", status=status, retry_after=ra, body=body)

    @classmethod
    def rate_limit(cls, retry_after: str | float | None = "1") -> Fault:
        """429 Too Many Requests with a Retry-After header."""
        return cls.error(429, retry_after=retry_after)

    @classmethod
    def hang(cls, seconds: float | None = None) -> Fault:
        """Read the request and never answer (the client's timeout must fire)."""
        return cls("hang", seconds=seconds)

    @classmethod
    def drop(cls) -> Fault:
        """Close the socket without sending a response."""
        return cls("drop")

    @classmethod
    def malformed(cls) -> Fault:
        """200 OK with a body that is not JSON."""
        return cls("malformed", body=b'{"choices": [{"message": ')

    @classmethod
    def no_choices(cls) -> Fault:
        """200 OK with valid JSON lacking ``choices``."""
        return cls("no_choices", body=b'{"object": "chat.completion", "choices": []}')


@dataclass
class FaultRule:
    """Apply ``fault`` to requests whose last user message contains ``match`` (and whose model is ``model``)."""

    match: str
    fault: Fault
    model: str | None = None
    times: int | None = None
    """Apply to the first ``times`` matching requests only (then answer normally); ``None`` = always."""
    hits: int = 0


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Header names lower-cased."""
    json: Any
    """The parsed body, or ``None`` when it was not JSON."""


@dataclass
class _Config:
    latency_ms: float
    reply: Reply
    faults: dict[int, Fault]
    rules: list[FaultRule]
    api_key: str | None
    record: bool


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 408: "Request Timeout",
            409: "Conflict", 422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _response(status: int, body: bytes, extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n")
    return head.encode("latin-1") + body


def _error(status: int, message: str) -> bytes:
    return _response(status, _dumps({"error": {"message": message, "type": "fake", "code": status}}))


def _last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content", ""))
        return str(messages[-1].get("content", "")) if messages and isinstance(messages[-1], dict) else ""
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else str(prompt)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: parse requests from the byte stream, answer in order."""

    __slots__ = ("buffer", "server", "transport")

    def __init__(self, server: FakeOpenAI) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        self.server._transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._transports.discard(self.transport)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(buffer) < end + 4 + length:
                break
            body = buffer[end + 4 : end + 4 + length]
            buffer = buffer[end + 4 + length :]
            method, _, rest = head[0].partition(" ")
            target = rest.rpartition(" ")[0]
            self.server._handle(self, method, target, headers, body)
            if self.transport is None or self.transport.is_closing():
                buffer = b""
                break
        self.buffer = buffer

    def send(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class FakeOpenAI:
    """A scriptable OpenAI-compatible server on 127.0.0.1 (see the module docstring).

    ``faults`` maps request numbers (1-based) to a :class:`Fault`; ``rules`` apply faults by content. Both may be
    changed while the server runs (``server.faults[5] = Fault.drop()``). ``api_key`` makes the server demand
    ``Authorization: Bearer <key>`` or ``api-key: <key>`` (401 otherwise).
    """

    def __init__(self, *, latency_ms: float = 0.0, reply: Reply = echo, faults: Mapping[int, Fault] | None = None,
                 rules: Sequence[FaultRule] = (), api_key: str | None = None, record: bool = True,
                 port: int = 0) -> None:
        self.config = _Config(latency_ms, reply, dict(faults or {}), list(rules), api_key, record)
        self.requests: list[Received] = []
        self.count = 0
        """Requests received."""
        self.connections = 0
        """TCP connections accepted (keep-alive keeps this near the client's pool size)."""
        self.outcomes: collections.Counter[str] = collections.Counter()
        """Answers by kind: ``"200"``, ``"429"``, ``"drop"``, ``"hang"``, ``"malformed"``, …"""
        self.port = port
        self._transports: set[asyncio.BaseTransport] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    # -- scripting -------------------------------------------------------------------------------------------

    @property
    def faults(self) -> dict[int, Fault]:
        return self.config.faults

    @property
    def rules(self) -> list[FaultRule]:
        return self.config.rules

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """Without ``/v1`` (Azure-style clients add ``/openai/deployments/…`` to it)."""
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(lambda: _Connection(self), "127.0.0.1", self.port, backlog=1024)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # report bind failures to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for transport in list(self._transports):
                transport.abort()
            # Let the aborts run their connection_lost callbacks (which close the sockets) before stopping.
            for _ in range(3):
                await asyncio.sleep(0)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling (runs on the server loop) ----------------------------------------------------------

    def _handle(self, conn: _Connection, method: str, target: str, headers: dict[str, str], raw: bytes) -> None:
        config = self.config
        self.count += 1
        number = self.count
        path, _, query_string = target.partition("?")
        try:
            body = _loads(raw) if raw else None
        except ValueError:
            body = None
        if config.record:
            query = dict(parse_qsl(query_string)) if query_string else {}
            self.requests.append(Received(method, path, query, headers, body))

        if method != "POST":
            return self._send(conn, "404", _error(404, f"no route for {method} {path}"))
        chat = path.endswith("/chat/completions")
        if not chat and not path.endswith("/completions"):
            return self._send(conn, "404", _error(404, f"no route for {path}"))
        if config.api_key is not None:
            bearer = headers.get("authorization", "")
            if bearer != f"Bearer {config.api_key}" and headers.get("api-key") != config.api_key:
                return self._send(conn, "401", _error(401, "invalid api key"))
        if not isinstance(body, dict):
            return self._send(conn, "400", _error(400, "body is not a JSON object"))
        if "/openai/deployments/" in path:
            model = path.split("/openai/deployments/", 1)[1].split("/", 1)[0]
        else:
            model = str(body.get("model", ""))
        text = _last_user_text(body)

        fault = config.faults.get(number)
        if fault is None and config.rules:
            for rule in config.rules:
                if (rule.match in text and (rule.model is None or rule.model == model)
                        and (rule.times is None or rule.hits < rule.times)):
                    rule.hits += 1
                    fault = rule.fault
                    break
        if fault is not None:
            return self._fault(conn, fault)

        try:
            answer = config.reply(model, text, body)
        except Exception as exc:  # a broken reply function shows up as a 500, not a dead server thread
            return self._send(conn, "500", _error(500, f"reply function raised {type(exc).__name__}: {exc}"))
        payload = self._completion(chat, model, text, body, answer)
        self._send(conn, "200", _response(200, payload))

    def _completion(self, chat: bool, model: str, text: str, body: dict[str, Any],
                    answer: str | dict[str, Any]) -> bytes:
        if isinstance(answer, dict):
            content = str(answer.get("text", ""))
            finish = answer.get("finish_reason", "stop")
            prompt_tokens = answer.get("prompt_tokens")
            completion_tokens = answer.get("completion_tokens")
        else:
            content, finish, prompt_tokens, completion_tokens = answer, "stop", None, None
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int) and max_tokens > 0:
            words = content.split(" ")
            if len(words) > max_tokens:  # deterministic truncation so finish_reason "length" can be tested
                content, finish = " ".join(words[:max_tokens]), "length"
        if prompt_tokens is None:
            prompt_tokens = len(text.split())
        if completion_tokens is None:
            completion_tokens = len(content.split())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": finish}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": content, "finish_reason": finish}
            kind = "text_completion"
        return _dumps({"id": f"fake-{self.count}", "object": kind, "created": 0, "model": model,
                       "choices": [choice], "usage": usage})

    def _fault(self, conn: _Connection, fault: Fault) -> None:
        loop = self._loop
        assert loop is not None
        if fault.kind == "drop":
            self.outcomes["drop"] += 1
            conn.close()
        elif fault.kind == "hang":
            self.outcomes["hang"] += 1
            if fault.seconds is not None:
                loop.call_later(fault.seconds, conn.close)
        elif fault.kind == "status":
            extra = f"retry-after: {fault.retry_after}\r\n" if fault.retry_after is not None else ""
            self.outcomes[str(fault.status)] += 1
            conn.send(_response(fault.status, fault.body or b"", extra))
        else:  # malformed, no_choices: a 200 the client must reject
            self.outcomes[fault.kind] += 1
            conn.send(_response(200, fault.body or b""))

    def _send(self, conn: _Connection, outcome: str, payload: bytes) -> None:
        self.outcomes[outcome] += 1
        delay = self.config.latency_ms
        if delay > 0 and outcome == "200":
            assert self._loop is not None
            self._loop.call_later(delay / 1000.0, conn.send, payload)
        else:
            conn.send(payload)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve from this process: ``python tests/fakeserver.py --latency-ms 0 [--port N]``."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--by-model", action="store_true", help="reply '[model] <text>' instead of 'echo: …'")
    args = parser.parse_args(argv)
    server = FakeOpenAI(latency_ms=args.latency_ms, reply=echo_by_model if args.by_model else echo,
                        record=False, port=args.port)
    with server:
        print(server.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
