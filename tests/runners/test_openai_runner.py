"""openai runner against a real loopback server (tests/fakeserver.py): the protocol, every fault class, auth,
Azure URLs, and that no secret reaches identity() or an error message."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import gc
import json
import socket
import ssl
import time
from typing import Any

import pytest

from fakeserver import FakeOpenAI, Fault, FaultRule, echo_by_model
from runners.drive import failure, one, request, run
from tunebench.errors import ConfigError, RetryableError, RunnerError
from tunebench.runners import Request, Response, RunnerContext
from tunebench.runners import openai as openai_module
from tunebench.runners.openai import openai, parse_retry_after

KEY = "sk-test-0123456789abcdef"

# A throwaway test CA and a certificate it signed for 127.0.0.1 (EC P-256, valid until 2126), made with
# `openssl req -x509 …` and `openssl x509 -req … -extfile` (SAN IP:127.0.0.1, serverAuth): TLS without a network.
TEST_CA = """\
-----BEGIN CERTIFICATE-----
MIIBoDCCAUWgAwIBAgIUD0umInrOtmtkukmImL/9AfmhD2swCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRdHVuZWJlbmNoIHRlc3QgQ0EwIBcNMjYxMTI0MTY1ODM1WhgP
MjEyNjEwMzExNjU4MzVaMBwxGjAYBgNVBAMMEXR1bmViZW5jaCB0ZXN0IENBMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAETcgETeEioeaXTHWKd+rIY2Npf7t+r8ld
mOWZV+vhyaGrlinNgaHW3cPcwQjaCc1DPvsUW9l9YNapp3zPAeEDH6NjMGEwHQYD
VR0OBBYEFMsnl7g6/xW+7vWuwBI+VBdZdMFyMB8GA1UdIwQYMBaAFMsnl7g6/xW+
7vWuwBI+VBdZdMFyMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMAoG
CCqGSM49BAMCA0kAMEYCIQDZDd/r0c7Q8SJEpqWgIaZAfiE6mUnbK6pBXRQoiGjC
+QIhAL6xqw/b53QY1t0bCUPOoibSbXiuZS9dAcuWqZbXF3T2
-----END CERTIFICATE-----
"""
TEST_CERT = """\
-----BEGIN CERTIFICATE-----
MIIBvDCCAWKgAwIBAgIUXjy76qvFKZjOMy1RhKJUv7ZImSwwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRdHVuZWJlbmNoIHRlc3QgQ0EwIBcNMjYxMTI0MTY1ODM1WhgP
MjEyNjEwMzExNjU4MzVaMBQxEjAQBgNVBAMMCTEyNy4wLjAuMTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABBZmoIi4H+tUiWwMi+lYeu8EM9mw1mE5uya4Wy9OBw4f
vCgL3/rkquY6hjh207AuRFxWhVFQ9bWrdCzg7OcmdmOjgYcwgYQwDAYDVR0TAQH/
BAIwADAOBgNVHQ8BAf8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwEwDwYDVR0R
BAgwBocEfwAAATAfBgNVHSMEGDAWgBTLJ5e4Ov8Vvu71rsASPlQXWXTBcjAdBgNV
HQ4EFgQU9hH2COFkO3OHXaDfrnAdx7Z1Wy4wCgYIKoZIzj0EAwIDSAAwRQIhAM65
2IHbYOZQpj3CkDEQKsn9yMc5Luir53gGf/A6hGVkAiBbSDQb15Jp8A1z0EvmRxjy
/BULbtQU2GY5TSFT7dGyGA==
-----END CERTIFICATE-----
"""
TEST_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgEeY5/Zh+ZZoEtByl
rpY3kv2HiKpRM72a57KOnY7qo0ehRANCAAQWZqCIuB/rVIlsDIvpWHrvBDPZsNZh
ObsmuFsvTgcOH7woC9/65KrmOoY4dtOwLkRcVoVRUPW1q3Qs4OznJnZj
-----END PRIVATE KEY-----
"""


def build(base_url: str, *, timeout_s: float = 5.0, concurrency: int = 4, **options: Any):
    options = {"base_url": base_url, "model": "base-model", **options}
    context = RunnerContext(model_name="base", timeout_s=timeout_s, concurrency=concurrency)
    return openai.__tunebench_runner__.build(options, context)


# -- protocol ------------------------------------------------------------------------------------------------


def test_chat_completion_roundtrip():
    with FakeOpenAI() as server:
        messages = ({"role": "system", "content": "be brief"}, {"role": "user", "content": "what is two plus two"})
        response = one(build(server.base_url), Request("c1", 0, messages))
    assert response.text == "echo: what is two plus two"
    assert response.prompt_tokens == 5  # the fake counts words of the last user message
    assert response.completion_tokens == 6
    assert response.finish_reason == "stop"
    (received,) = server.requests
    assert received.method == "POST"
    assert received.path == "/v1/chat/completions"
    assert received.headers["content-type"] == "application/json"
    assert received.json == {"model": "base-model", "messages": [dict(m) for m in messages]}


def test_params_are_passed_through_into_the_body():
    params = {"temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["\n\n"], "max_tokens": 2}
    with FakeOpenAI() as server:
        response = one(build(server.base_url, params=params), request("one two three four"))
    body = server.requests[0].json
    assert {k: body[k] for k in params} == params
    # The fake truncates to max_tokens words and reports it, as real servers do.
    assert response.text == "echo: one"
    assert response.finish_reason == "length"


@pytest.mark.parametrize("name", ["model", "messages", "prompt", "stream"])
def test_params_may_not_override_the_request(name):
    with pytest.raises(ConfigError, match=name):
        build("http://127.0.0.1:1/v1", params={name: "x"})


def test_completions_api_sends_the_flattened_prompt():
    messages = ({"role": "system", "content": "sys"}, {"role": "user", "content": "say hi"})
    req = Request("c1", 0, messages)
    with FakeOpenAI() as server:
        response = one(build(server.base_url, api="completions", params={"max_tokens": 50}), req)
    received = server.requests[0]
    assert received.path == "/v1/completions"
    assert received.json == {"model": "base-model", "prompt": req.prompt, "max_tokens": 50}
    assert response.text == f"echo: {req.prompt}"
    assert response.finish_reason == "stop"


def test_model_dependent_replies_differ():
    with FakeOpenAI(reply=echo_by_model) as server:
        base = one(build(server.base_url, model="base"))
        tuned = one(build(server.base_url, model="tuned"))
    assert (base.text, tuned.text) == ("[base] hello world", "[tuned] hello world")


def test_many_concurrent_requests_reuse_a_bounded_pool():
    requests = [request(f"question {i}", case_id=f"c{i}") for i in range(300)]
    with FakeOpenAI(latency_ms=1) as server:
        results = run(build(server.base_url, concurrency=8), *requests)
    assert [r.text for r in results] == [f"echo: question {i}" for i in range(300)]
    assert server.count == 300
    assert server.connections <= 8  # keep-alive: connections are reused, never more than the pool


def test_a_runner_survives_a_second_event_loop():
    with FakeOpenAI() as server:
        runner = build(server.base_url)
        assert one(runner).text == "echo: hello world"
        assert one(runner, request("again")).text == "echo: again"


def test_a_new_loop_without_aclose_opens_a_new_session_quietly(caplog):
    """The old session's loop is gone: the runner abandons it without an "Unclosed client session" error."""
    with FakeOpenAI() as server:
        runner = build(server.base_url)
        first = asyncio.run(runner.generate(request("first")))
        second = asyncio.run(runner.generate(request("second")))
        run(runner)  # closes the second session on a third loop
        del runner
        gc.collect()
    assert (first.text, second.text) == ("echo: first", "echo: second")
    assert server.connections == 2  # one per loop: connections never cross loops
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]


def test_environment_proxy_is_honoured(monkeypatch):
    """HTTP_PROXY is read once per transport (not per request) and used."""
    with FakeOpenAI() as proxy:
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        response = one(build("http://upstream.invalid/v1"))
    assert response.text == "echo: hello world"
    (received,) = proxy.requests  # a proxy receives the absolute URL as the request target
    assert received.path == "http://upstream.invalid/v1/chat/completions"


# -- auth and secrets ----------------------------------------------------------------------------------------


def test_api_key_is_sent_as_bearer_and_kept_out_of_identity(monkeypatch):
    monkeypatch.setenv("TB_TEST_KEY", KEY)
    headers = {"X-Org": "org-private-value-42", "X-Trace": "1"}
    with FakeOpenAI(api_key=KEY) as server:
        runner = build(server.base_url, api_key_env="TB_TEST_KEY", headers=headers, params={"seed": 1})
        identity = runner.identity()
        assert one(runner).text == "echo: hello world"
    sent = server.requests[0].headers
    assert sent["authorization"] == f"Bearer {KEY}"
    assert sent["x-org"] == "org-private-value-42"
    assert identity == {
        "kind": "openai", "base_url": server.base_url, "model": "base-model", "api": "chat",
        "params": {"seed": 1}, "azure_api_version": None, "headers": ["X-Org", "X-Trace"],
    }
    dumped = json.dumps(identity)
    assert KEY not in dumped and "org-private-value-42" not in dumped and "TB_TEST_KEY" not in dumped


def test_unset_api_key_variable_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.delenv("TB_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match="TB_UNSET_KEY"):
        build("http://127.0.0.1:1/v1", api_key_env="TB_UNSET_KEY")


def test_wrong_key_is_a_permanent_error_without_the_key(monkeypatch):
    monkeypatch.setenv("TB_TEST_KEY", KEY)
    with FakeOpenAI(api_key="sk-the-right-one") as server:
        error = failure(build(server.base_url, api_key_env="TB_TEST_KEY"))
    assert not isinstance(error, RetryableError)
    assert str(error).startswith(f"HTTP 401 from {server.base_url}/chat/completions")
    assert "api_key_env" in str(error)
    assert KEY not in str(error)


def test_secrets_echoed_by_the_server_are_scrubbed_from_errors(monkeypatch):
    monkeypatch.setenv("TB_TEST_KEY", KEY)
    body = json.dumps({"error": f"bad key {KEY} for org org-private-value-42"}).encode()
    with FakeOpenAI(faults={1: Fault.error(400, body=body)}) as server:
        runner = build(server.base_url, api_key_env="TB_TEST_KEY", headers={"X-Org": "org-private-value-42"})
        error = failure(runner)
    assert "bad key *** for org ***" in str(error)
    assert KEY not in str(error) and "org-private-value-42" not in str(error)


def test_credentials_in_the_url_are_sent_but_not_shown():
    with FakeOpenAI(faults={1: Fault.error(500)}) as server:
        url = server.base_url.replace("http://", "http://user:url-password-99@")
        runner = build(url)
        assert runner.identity()["base_url"] == server.base_url
        error = failure(runner)
    assert "url-password-99" not in str(error)
    assert server.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"user:url-password-99").decode()
    assert server.requests[0].path == "/v1/chat/completions"


def test_url_credentials_override_the_bearer_key(monkeypatch):
    monkeypatch.setenv("TB_TEST_KEY", KEY)
    with FakeOpenAI() as server:
        url = server.base_url.replace("http://", "http://u%40corp:p%3Ass-word@")
        headers = {"Authorization": "Token gateway-secret-1"}
        assert one(build(url, api_key_env="TB_TEST_KEY", headers=headers)).text == "echo: hello world"
    assert server.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"u@corp:p:ss-word").decode()


def test_user_headers_replace_defaults_whatever_their_case(monkeypatch):
    monkeypatch.setenv("TB_TEST_KEY", KEY)
    with FakeOpenAI() as server:
        headers = {"Authorization": "Token gateway-secret-1", "User-Agent": "my-gateway/1"}
        assert one(build(server.base_url, api_key_env="TB_TEST_KEY", headers=headers)).text == "echo: hello world"
    sent = server.requests[0].headers
    assert sent["authorization"] == "Token gateway-secret-1"
    assert sent["user-agent"] == "my-gateway/1"


def test_azure_style_url_header_and_api_version(monkeypatch):
    monkeypatch.setenv("TB_AZURE_KEY", KEY)
    with FakeOpenAI(api_key=KEY) as server:
        runner = build(server.root_url, model="my-deployment", api_key_env="TB_AZURE_KEY",
                       azure_api_version="2024-10-21")
        response = one(runner)
    received = server.requests[0]
    assert received.path == "/openai/deployments/my-deployment/chat/completions"
    assert received.query == {"api-version": "2024-10-21"}
    assert received.headers["api-key"] == KEY
    assert "authorization" not in received.headers
    assert response.text == "echo: hello world"
    assert runner.identity()["azure_api_version"] == "2024-10-21"


def test_bad_base_url_is_a_config_error():
    with pytest.raises(ConfigError, match="not an http"):
        build("localhost:8000/v1")


# -- faults --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "retry_after", "text"),
    [
        (Fault.rate_limit("2"), 2.0, "HTTP 429 from"),
        (Fault.rate_limit("0.5"), 0.5, "HTTP 429 from"),
        (Fault.rate_limit(None), None, "HTTP 429 from"),
        (Fault.error(503, retry_after="7"), 7.0, "HTTP 503 from"),
        (Fault.error(500), None, "HTTP 500 from"),
        (Fault.error(502), None, "HTTP 502 from"),
        (Fault.error(408), None, "HTTP 408 from"),
        (Fault.error(409), None, "HTTP 409 from"),
        (Fault.drop(), None, "connection failed to"),
    ],
)
def test_transient_faults_are_retryable(fault, retry_after, text):
    with FakeOpenAI(faults={1: fault}) as server:
        runner = build(server.base_url)
        results = run(runner, request(), request())  # the second request must still work
    error = next(r for r in results if isinstance(r, BaseException))
    assert isinstance(error, RetryableError)
    assert error.retry_after == retry_after
    assert str(error).startswith(f"{text} http://127.0.0.1:{server.port}/v1/chat/completions")
    assert any(isinstance(r, Response) and r.text == "echo: hello world" for r in results)


def test_error_message_quotes_the_start_of_the_body():
    with FakeOpenAI(faults={1: Fault.error(500, body=b"upstream exploded " + b"x" * 1000)}) as server:
        error = failure(build(server.base_url))
    prefix = f"HTTP 500 from {server.base_url}/chat/completions: upstream exploded "
    assert str(error).startswith(prefix)
    assert len(str(error)) == len(f"HTTP 500 from {server.base_url}/chat/completions: ") + 200


def test_retry_after_as_an_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    with FakeOpenAI(faults={1: Fault.rate_limit(when)}) as server:
        error = failure(build(server.base_url))
    assert isinstance(error, RetryableError)
    assert 25 <= error.retry_after <= 31


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), (" 1.5 ", 1.5), ("-4", 0.0), ("inf", None), ("nan", None), ("soon", None), ("", None), (None, None)],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value) == expected


def test_hang_longer_than_the_timeout_is_retryable():
    with FakeOpenAI(faults={1: Fault.hang()}) as server:
        started = time.perf_counter()
        error = failure(build(server.base_url, timeout_s=0.3))
        elapsed = time.perf_counter() - started
    assert isinstance(error, RetryableError)
    assert str(error) == f"timed out after 0.3s waiting for {server.base_url}/chat/completions"
    assert 0.25 < elapsed < 3


def test_connection_refused_is_retryable():
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = failure(build(f"http://127.0.0.1:{port}/v1"))
    assert isinstance(error, RetryableError)
    assert str(error).startswith(f"connection failed to http://127.0.0.1:{port}/v1/chat/completions")


@pytest.mark.parametrize(
    ("fault", "text"),
    [
        (Fault.malformed(), "malformed JSON from"),
        (Fault.no_choices(), "no choices in the response from"),
        (Fault.error(200, body=b'{"error": {"message": "model overloaded"}}'), "error from"),
        (Fault.error(200, body=b'{"choices": [{"message": {"content": [1]}}]}'), "unexpected response shape from"),
        (Fault.error(200, body=b'{"choices": [{"text": "completions shape"}]}'), "unexpected response shape from"),
        (Fault.error(400), "HTTP 400 from"),
        (Fault.error(422), "HTTP 422 from"),
        (Fault.error(404), "HTTP 404 from"),
    ],
)
def test_permanent_faults_are_not_retryable(fault, text):
    with FakeOpenAI(faults={1: fault}) as server:
        error = failure(build(server.base_url))
    assert type(error) is RunnerError
    assert str(error).startswith(f"{text} {server.base_url}/chat/completions")


def test_content_rules_fault_only_matching_requests_and_only_n_times():
    rules = [FaultRule("poison", Fault.error(500), times=1), FaultRule("tuned-only", Fault.drop(), model="tuned")]
    with FakeOpenAI(rules=rules) as server:
        runner = build(server.base_url)
        first = run(runner, request("poison pill"), request("fine"))
        second = run(runner, request("poison pill"), request("tuned-only but base"))
    assert isinstance(first[0], RetryableError) and first[1].text == "echo: fine"
    assert second[0].text == "echo: poison pill"
    assert second[1].text == "echo: tuned-only but base"
    assert server.outcomes["500"] == 1 and server.outcomes["200"] == 3


def test_plugin_registers_the_factory():
    registered = []
    openai_module.register_runners(registered.append)
    assert registered == [openai]
    assert openai.__tunebench_runner__.kind == "openai"


# -- TLS -----------------------------------------------------------------------------------------------------


async def tls_front(backend_port: int, tmp_path) -> asyncio.AbstractServer:
    """A TLS endpoint on 127.0.0.1 (TEST_CERT) that relays the decrypted bytes to the plain fake server."""
    (tmp_path / "cert.pem").write_text(TEST_CERT)
    (tmp_path / "key.pem").write_text(TEST_KEY)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", backend_port)
        await asyncio.gather(pipe(reader, backend_writer), pipe(backend_reader, writer))

    return await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)


def through_tls(tmp_path, server: FakeOpenAI) -> Response | BaseException:
    async def main() -> Response | BaseException:
        front = await tls_front(server.port, tmp_path)
        port = front.sockets[0].getsockname()[1]
        runner = build(f"https://127.0.0.1:{port}/v1")
        try:
            return await runner.generate(request())
        except Exception as exc:
            return exc
        finally:
            await runner.aclose()
            front.close()

    return asyncio.run(main())


def test_https_endpoint_signed_by_a_ca_in_ssl_cert_file(tmp_path, monkeypatch):
    (tmp_path / "ca.pem").write_text(TEST_CA)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with FakeOpenAI() as server:
        response = through_tls(tmp_path, server)
    assert isinstance(response, Response), response
    assert response.text == "echo: hello world"
    assert server.requests[0].path == "/v1/chat/completions"


def test_untrusted_certificate_is_a_permanent_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # certifi's or the system's CAs: not the test CA
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with FakeOpenAI() as server:
        error = through_tls(tmp_path, server)
    assert type(error) is RunnerError, error
    assert str(error).startswith("the TLS certificate of https://127.0.0.1:")
    assert "SSL_CERT_FILE" in str(error)
    assert server.count == 0


def test_unreadable_ssl_cert_file_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="SSL_CERT_FILE"):
        build("https://127.0.0.1:1/v1")
    build("http://127.0.0.1:1/v1")  # plain HTTP never reads it
