"""The ``openai`` runner: any OpenAI-compatible HTTP endpoint (OpenAI, Azure OpenAI, vLLM, TGI, Ollama,
llama.cpp, LM Studio), chat-completions or plain completions, over :mod:`.transport` (HTTP/1.1 keep-alive).

Invariants:
- One :class:`~.transport.Transport` per runner and event loop, made lazily inside the running loop with
  ``limit=context.concurrency``: keep-alive connections are pooled and never more than ``concurrency`` of them
  are open; callers beyond the limit wait for a connection with no pool timeout (waiting for our own
  concurrency limit is not a network timeout). ``aclose()`` closes it; a runner used from a new loop (a second
  ``asyncio.run``) makes a new transport and drops the old one, whose loop is gone.
- Nothing is created per request beyond the body (the request head is built once) and nothing is retried
  here: the engine owns retries, backoff, concurrency and latency measurement. The environment's proxy
  settings are read once per transport, never per request.
- HTTPS trusts what httpx (the OpenAI SDK's client) trusts: ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set,
  else certifi's bundle when installed, else the system store; an unreadable bundle is a ConfigError.
- Transient failures (408, 409, 429, 5xx, timeouts, connection errors, dropped connections, truncated or
  garbled responses) raise ``RetryableError`` carrying the server's Retry-After in seconds; everything else
  (other 4xx, redirects -- never followed --, an untrusted TLS certificate, malformed JSON, missing
  ``choices``) raises
  ``RunnerError``. Messages are short: status, URL, the first 200 characters of the body.
- Secrets never leave this module: the API key is read from the environment variable named by
  ``api_key_env`` (never from the suite), header values and URL credentials are not part of ``identity()``,
  and every error message is scrubbed of the key, of header values and of URL credentials before it is raised.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from .. import __version__
from ..errors import ConfigError, RetryableError, RunnerError
from ..hookspecs import hookimpl
from ._base import Request, Response, Runner, RunnerContext, runner
from .transport import CertificateError, Transport, TransportError, environment_proxy, request_head

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
        key: str | None = None
        if api_key_env is not None:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(f"openai runner: environment variable {api_key_env} is not set",
                                  hint=f"export {api_key_env}=… or remove api_key_env")
            secrets.append(key)

        base_headers = {"content-type": "application/json", "accept": "application/json",
                        "accept-encoding": "gzip, deflate", "user-agent": f"tunebench/{__version__}"}
        if key is not None:
            if azure_api_version is not None:
                base_headers["api-key"] = key
            else:
                base_headers["authorization"] = f"Bearer {key}"
        for name, value in headers.items():  # user headers win: a gateway may want its own auth scheme
            base_headers.pop(name.lower(), None)
            base_headers[name] = value
        if parts.username is not None or parts.password is not None:
            # Credentials embedded in the URL (user:pass@host) are sent as basic auth, overriding any other
            # Authorization (as httpx and curl do), and never reach identity() or error messages, which use
            # the URL without them; the request URL carries no credentials either.
            user, password = unquote(parts.username or ""), unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            for name in [n for n in base_headers if n.lower() == "authorization"]:
                del base_headers[name]
            base_headers["authorization"] = f"Basic {token}"
            secrets += [s for s in (password, parts.password, token) if s]
        self._secrets = tuple(secrets)
        self._headers = base_headers

        endpoint = "chat/completions" if api == "chat" else "completions"
        if azure_api_version is not None:
            root = self.base_url.removesuffix("/openai")
            deployment = quote(model, safe="")
            version = quote(azure_api_version, safe="")
            self.url = f"{root}/openai/deployments/{deployment}/{endpoint}?api-version={version}"
        else:
            self.url = f"{self.base_url}/{endpoint}"
        self._chat = api == "chat"
        self._ssl = _ssl_context() if parts.scheme == "https" else None
        self._transport: Transport | None = None  # bound to self._loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._head = b""

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "base_url": self.base_url, "model": self.model, "api": self.api,
                "params": self.params, "azure_api_version": self.azure_api_version,
                "headers": self.header_names}

    def _open(self, loop: asyncio.AbstractEventLoop) -> Transport:
        """A transport for this loop. Connections belong to the loop that opened them."""
        if self._transport is not None:
            self._transport.close()
        url = urlsplit(self.url)
        transport = Transport(self.url, limit=self.concurrency, timeout_s=self.timeout_s, ssl_context=self._ssl,
                              proxy=environment_proxy(url.scheme, url.hostname or ""))
        target = self.url if transport.through_http_proxy else urlunsplit(("", "", url.path or "/", url.query, ""))
        headers = {"host": transport.authority, **self._headers}
        if transport.through_http_proxy and transport.proxy_auth:
            headers["proxy-authorization"] = transport.proxy_auth
        try:
            self._head = request_head("POST", target, headers)
        except ValueError as exc:
            raise ConfigError(f"openai runner: {self._scrub(str(exc))}", hint="remove the line break") from None
        self._transport, self._loop = transport, loop
        return transport

    async def generate(self, request: Request) -> Response:
        transport = self._transport
        loop = asyncio.get_running_loop()
        if transport is None or self._loop is not loop:
            transport = self._open(loop)
        if self._chat:
            body = {"model": self.model, "messages": request.messages, **self.params}
        else:
            body = {"model": self.model, "prompt": request.prompt, **self.params}
        try:
            status, headers, content = await transport.post(self._head, _dumps(body))
        except TimeoutError:
            raise RetryableError(f"timed out after {self.timeout_s:g}s waiting for {self.url}") from None
        except CertificateError as exc:  # retrying cannot make it trusted
            raise RunnerError(self._scrub(f"the TLS certificate of {self.url} is not trusted: {_describe(exc)}"
                                          " (set SSL_CERT_FILE to the CA bundle that signed it)")) from None
        except (TransportError, OSError) as exc:
            # Refused or reset, the server closing mid-response, a truncated body, a garbled status line.
            raise RetryableError(self._scrub(f"connection failed to {self.url}: {_describe(exc)}")) from None
        retry_after = headers.get("retry-after") if status >= 300 else None

        if status >= 300:
            self._raise_for_status(status, content, retry_after)
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
        transport, self._transport, self._loop = self._transport, None, None
        if transport is not None:
            transport.close()


def _ssl_context() -> Any:
    """Trust what httpx (and so the OpenAI SDK) trusts: ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` when set, else
    certifi's bundle when it is installed, else the system's store."""
    import ssl

    cafile, capath = os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None
    if cafile is None and capath is None:
        try:
            import certifi
        except ImportError:
            return None
        cafile = certifi.where()
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as exc:
        source = "SSL_CERT_FILE" if os.environ.get("SSL_CERT_FILE") else "SSL_CERT_DIR" if capath else "certifi"
        raise ConfigError(f"openai runner: cannot load the CA certificates named by {source} ({exc})",
                          hint="point SSL_CERT_FILE at a PEM bundle, or unset it") from None


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
