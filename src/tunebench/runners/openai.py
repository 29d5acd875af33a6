"""The ``openai`` runner: any OpenAI-compatible HTTP endpoint (OpenAI, Azure OpenAI, vLLM, TGI, Ollama,
llama.cpp, LM Studio), chat-completions or plain completions.

Invariants:
- Connections are pooled per runner (keep-alive), at most ``context.concurrency`` of them, created lazily inside
  the running event loop and closed by ``aclose()``; see :class:`_ClientPool` for why the pool holds
  one-connection ``httpx.AsyncClient``s. Nothing is created per request and nothing is retried here: the
  engine owns retries, backoff, concurrency and latency measurement. httpx is imported on first use only.
- Transient failures (408, 409, 429, 5xx, timeouts, connection errors, dropped connections) raise
  ``RetryableError`` carrying the server's Retry-After in seconds; everything else (other 4xx, malformed JSON,
  missing ``choices``) raises ``RunnerError``. Messages are short: status, URL, the first 200 characters of
  the body.
- Secrets never leave this module: the API key is read from the environment variable named by
  ``api_key_env`` (never from the suite), header values are not part of ``identity()``, and every error
  message is scrubbed of the key and of header values before it is raised.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from .. import __version__
from ..errors import ConfigError, RetryableError, RunnerError
from ..hookspecs import hookimpl
from ._base import Request, Response, Runner, RunnerContext, runner

try:  # orjson parses and serialises several times faster; plain json is the fallback
    import orjson

    _dumps: Callable[[Any], bytes] = orjson.dumps
    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    _loads = json.loads

__all__ = ["OpenAIRunner", "openai"]

_RETRYABLE_STATUS = frozenset({408, 409, 429})
_RESERVED_PARAMS = ("model", "messages", "prompt", "stream")
_SNIPPET = 200


class OpenAIRunner(Runner):
    """The runner behind ``kind: openai``."""

    kind = "openai"

    def __init__(self, *, base_url: str, model: str, api: str, api_key_env: str | None,
                 headers: dict[str, str], params: dict[str, Any], azure_api_version: str | None,
                 context: RunnerContext) -> None:
        parts = urlsplit(base_url.strip())
        try:
            port = parts.port
        except ValueError:
            port, parts = None, parts._replace(netloc="")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"openai runner: base_url {base_url!r} is not an http(s) URL",
                              hint="for example http://localhost:8000/v1")
        reserved = [name for name in _RESERVED_PARAMS if name in params]
        if reserved:
            raise ConfigError(f"openai runner: params may not set {', '.join(reserved)}",
                              hint="the model goes in 'model'; prompts come from the suite; streaming is unsupported")
        # Credentials embedded in the URL (user:pass@host) are sent (httpx turns them into basic auth) but
        # never reach identity() or error messages, which use the URL without them.
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = host + (f":{port}" if port else "")
        self.base_url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.model = model
        self.api = api
        self.params = params
        self.azure_api_version = azure_api_version
        self.header_names = sorted(headers, key=str.lower)
        self.timeout_s = context.timeout_s
        self.concurrency = max(1, context.concurrency)

        secrets = [value for value in headers.values() if len(value) >= 8]
        if parts.password:
            secrets.append(parts.password)
        key: str | None = None
        if api_key_env is not None:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(f"openai runner: environment variable {api_key_env} is not set",
                                  hint=f"export {api_key_env}=… or remove api_key_env")
            secrets.append(key)
        self._secrets = tuple(secrets)

        base_headers = {"content-type": "application/json", "accept": "application/json",
                        "user-agent": f"tunebench/{__version__}"}
        if key is not None:
            if azure_api_version is not None:
                base_headers["api-key"] = key
            else:
                base_headers["authorization"] = f"Bearer {key}"
        base_headers.update(headers)  # user headers win: a gateway may want its own auth scheme
        self._headers = base_headers

        endpoint = "chat/completions" if api == "chat" else "completions"
        if azure_api_version is not None:
            root = self.base_url.removesuffix("/openai")
            deployment = quote(model, safe="")
            version = quote(azure_api_version, safe="")
            self.url = f"{root}/openai/deployments/{deployment}/{endpoint}?api-version={version}"
        else:
            self.url = f"{self.base_url}/{endpoint}"
        self._request_url = self.url
        if "@" in parts.netloc:
            self._request_url = parts.scheme + "://" + parts.netloc + self.url.split(netloc, 1)[1]
        self._chat = api == "chat"
        self._pool: _ClientPool | None = None

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "base_url": self.base_url, "model": self.model, "api": self.api,
                "params": self.params, "azure_api_version": self.azure_api_version,
                "headers": self.header_names}

    async def generate(self, request: Request) -> Response:
        pool = self._pool
        if pool is None or pool.loop is not asyncio.get_running_loop():
            # Connections belong to the loop that opened them: a new loop (a second asyncio.run) needs a new
            # pool. The old one cannot be closed from here; its sockets die with their loop.
            pool = self._pool = _ClientPool(self._headers, self.timeout_s, self.concurrency)
        if self._chat:
            body = {"model": self.model, "messages": request.messages, **self.params}
        else:
            body = {"model": self.model, "prompt": request.prompt, **self.params}
        client = await pool.acquire()
        try:
            response = await client.post(pool.url(self._request_url), content=_dumps(body))
        except Exception as exc:
            raise self._transport_error(exc) from None
        finally:
            pool.release(client)

        status = response.status_code
        content = response.content
        if status >= 300:
            self._raise_for_status(status, content, response.headers.get("retry-after"))
        try:
            data = _loads(content)
            choice = data["choices"][0]
            text = choice["message"]["content"] if self._chat else choice["text"]
            if text is None:  # content is null for refusals and tool calls
                text = ""
            elif not isinstance(text, str):
                raise TypeError
        except (ValueError, TypeError, KeyError, IndexError):
            raise RunnerError(self._scrub(self._bad_body(content))) from None
        usage = data.get("usage") or {}
        return Response(
            text=text,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            finish_reason=choice.get("finish_reason"),
        )

    def _transport_error(self, exc: Exception) -> Exception:
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            return RetryableError(f"timed out after {self.timeout_s:g}s waiting for {self.url}")
        if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
            return RetryableError(self._scrub(f"connection failed to {self.url}: {_describe(exc)}"))
        if isinstance(exc, httpx.HTTPError):
            return RunnerError(self._scrub(f"request to {self.url} failed: {_describe(exc)}"))
        return exc

    def _raise_for_status(self, status: int, content: bytes, retry_after: str | None) -> None:
        message = self._scrub(f"HTTP {status} from {self.url}: {_snippet(content)}")
        if status in _RETRYABLE_STATUS or status >= 500:
            raise RetryableError(message, retry_after=parse_retry_after(retry_after))
        if status in (401, 403):
            message += " (check the API key: api_key_env / headers)"
        elif status == 404:
            message += " (check base_url and model)"
        raise RunnerError(message)

    def _bad_body(self, content: bytes) -> str:
        try:
            data = _loads(content)
        except ValueError:
            return f"malformed JSON from {self.url}: {_snippet(content)}"
        if isinstance(data, dict) and data.get("error"):
            return f"error from {self.url}: {_snippet(content)}"
        if not isinstance(data, dict) or not data.get("choices"):
            return f"no choices in the response from {self.url}: {_snippet(content)}"
        return f"unexpected response shape from {self.url}: {_snippet(content)}"

    def _scrub(self, message: str) -> str:
        for secret in self._secrets:
            if secret in message:
                message = message.replace(secret, "***")
        return message

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()


class _ClientPool:
    """Single-connection ``httpx.AsyncClient``s, one per request in flight, at most ``size`` of them.

    Why not one client with ``size`` connections: httpcore's pool scans every connection (a ``poll`` syscall
    each) on every request. Measured on 2 cores against tests/fakeserver.py with 64 requests in flight, one
    64-connection client costs ~2,100 µs of CPU per request, 64 one-connection clients ~600 µs. Clients are
    handed out LIFO so the warmest keep-alive connections are reused; callers beyond ``size`` wait in FIFO
    order with no pool timeout (waiting for our own concurrency limit is not a network timeout).
    """

    def __init__(self, headers: dict[str, str], timeout_s: float, size: int) -> None:
        import httpx

        self.loop = asyncio.get_running_loop()
        self._size = size
        self._idle: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []
        self._waiters: collections.deque[asyncio.Future[httpx.AsyncClient]] = collections.deque()
        self._urls: dict[str, httpx.URL] = {}
        # One TLS context for every client: httpx would otherwise build one (~20 ms) per client.
        self._kwargs: dict[str, Any] = {
            "headers": headers,
            "timeout": httpx.Timeout(timeout_s),
            "limits": httpx.Limits(max_connections=1, max_keepalive_connections=1),
            "verify": httpx.create_ssl_context(),
            "follow_redirects": False,
        }

    def url(self, url: str) -> Any:
        """A parsed ``httpx.URL``, cached: parsing it on every request costs ~25 µs."""
        parsed = self._urls.get(url)
        if parsed is None:
            import httpx

            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    async def acquire(self) -> Any:
        if self._idle:
            return self._idle.pop()
        if len(self._all) < self._size:
            import httpx

            client = httpx.AsyncClient(**self._kwargs)
            self._all.append(client)
            return client
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a client just as we were cancelled
                self.release(waiter.result())
            raise

    def release(self, client: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(client)
                return
        self._idle.append(client)

    async def aclose(self) -> None:
        clients, self._all, self._idle = self._all, [], []
        for client in clients:
            await client.aclose()


@runner("openai", description="Any OpenAI-compatible endpoint (OpenAI, Azure, vLLM, TGI, Ollama, llama.cpp)")
def openai(
    *,
    base_url: str,
    model: str,
    api: Literal["chat", "completions"] = "chat",
    api_key_env: str | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    azure_api_version: str | None = None,
    context: RunnerContext,
) -> OpenAIRunner:
    """Query ``base_url`` (``http://host:8000/v1``; for Azure the resource URL) with ``model``.

    ``api_key_env`` names the environment variable holding the key (sent as ``Authorization: Bearer``, or as
    ``api-key`` for Azure); ``params`` (temperature, max_tokens, seed, stop, …) go into the JSON body as they
    are; ``azure_api_version`` switches to Azure's ``/openai/deployments/{model}/…?api-version=`` URLs.
    """
    return OpenAIRunner(base_url=base_url, model=model, api=api, api_key_env=api_key_env,
                        headers=dict(headers or {}), params=dict(params or {}),
                        azure_api_version=azure_api_version, context=context)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); ``None`` when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _snippet(content: bytes) -> str:
    text = content[: _SNIPPET * 4].decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text[:_SNIPPET] if text else "(empty body)"


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@hookimpl
def register_runners(register: Callable[[Any], None]) -> None:
    register(openai)
