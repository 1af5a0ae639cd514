"""The local server takes only what a local OpenAI client sends, and a client that leaves or stalls costs nothing.

A stand-in service replaces the model (the HTTP layer is what is under test), so these run in milliseconds.
"""

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving_helpers import StandInService, get, parse_metrics, prompt_of, reply_alone, stream_chat

from decoding.lab import serve_load
from decoding.serving import server as serving
from decoding.serving.server import RequestError, Server, make_server, parse_request

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
def serve(monkeypatch):
    servers = []

    def start(service, timeout: float | None = None, max_queued: int = serving.DEFAULT_MAX_QUEUED) -> Server:
        if timeout is not None:
            monkeypatch.setattr(serving.Handler, "timeout", timeout)
        server = make_server(service, "127.0.0.1", 0, max_queued)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def port_of(server: Server) -> int:
    return server.server_address[1]


def until(condition: Callable[[], bool], wait: float = 20) -> bool:
    """Poll `condition` until it holds (True) or `wait` seconds pass (False)."""
    deadline = time.monotonic() + wait
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def exchange(port: int, raw: bytes, wait: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes the connection (or `wait` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(raw)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def post(path: str, body: bytes, port: int, content_type: str = "application/json", host: str | None = None) -> bytes:
    host = host or f"127.0.0.1:{port}"
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_hangs_up_stops_its_running_generation(serve, stream):
    service = StandInService(hold=True)
    server = serve(service)
    port = port_of(server)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post("/v1/chat/completions", json.dumps({**CHAT, "stream": stream}).encode(), port))
        assert until(lambda: bool(service.ran))
    assert until(service.ran[0].cancelled.is_set)  # it stops at its next token
    assert until(lambda: server.scheduler.gauges() == (0, 0))  # and the worker is free for the next request
    assert server.scheduler.metrics.requests["cancelled"] == 1


def test_sixty_four_streaming_clients_all_get_the_text_they_would_get_alone(serve):
    service = StandInService(hold=True)
    server = serve(service)
    messages = [f"Say the number {i} back." for i in range(64)]
    answers = []
    with ThreadPoolExecutor(64) as pool:
        for message in messages:
            answers.append(pool.submit(stream_chat, port_of(server), message))
        assert until(lambda: server.scheduler.gauges() == (1, 63))  # all there at once: one running, the rest queued
        service.gate.set()
    assert [answer.result() [::2] for answer in answers] == [(200, reply_alone(m)) for m in messages]


def test_beyond_the_queue_clients_get_429_with_retry_after_and_the_queued_ones_their_text(serve):
    service = StandInService(hold=True)
    server = serve(service, max_queued=3)
    messages = [f"Say the number {i} back." for i in range(64)]
    answers = []
    with ThreadPoolExecutor(64) as pool:
        for message in messages:
            answers.append(pool.submit(stream_chat, port_of(server), message))
        assert until(lambda: server.scheduler.metrics.requests["rejected"] == 60)
        assert server.scheduler.gauges() == (1, 3)
        service.gate.set()
    results = [answer.result() for answer in answers]
    texts = [(m, text) for m, (status, _, text) in zip(messages, results, strict=True) if status == 200]
    assert len(texts) == 4 and all(text == reply_alone(m) for m, text in texts)
    refused = [(headers, json.loads(body)) for status, headers, body in results if status == 429]
    assert len(refused) == 60
    for headers, body in refused:
        assert int(headers["Retry-After"]) >= 1
        error = body["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "queue_full")
        assert "--max-queued" in error["message"]


def test_a_queued_request_whose_client_left_is_dropped_and_never_runs(serve):
    service = StandInService(hold=True)
    server = serve(service, max_queued=1)
    port = port_of(server)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(stream_chat, port, "the first")
        assert until(lambda: server.scheduler.gauges() == (1, 0))
        with socket.create_connection(("127.0.0.1", port)) as sock:
            leaving = {**CHAT, "stream": True, "messages": [{"role": "user", "content": "the one who left"}]}
            sock.sendall(post("/v1/chat/completions", json.dumps(leaving).encode(), port))
            assert until(lambda: server.scheduler.gauges() == (1, 1))
        assert until(lambda: server.scheduler.gauges() == (1, 0))  # its place is free before the first ends
        later = pool.submit(stream_chat, port, "the later one")
        assert until(lambda: server.scheduler.gauges() == (1, 1))  # the freed place is taken, no 429
        service.gate.set()
        assert first.result()[0] == later.result()[0] == 200
    assert [job.prompt for job in service.ran] == [prompt_of("the first"), prompt_of("the later one")]
    assert server.scheduler.metrics.requests["cancelled"] == 1


def test_metrics_are_prometheus_text_and_count_each_request(serve):
    server = serve(StandInService(), max_queued=0)
    port = port_of(server)
    status, kind, text = get(port, "/metrics")
    assert status == 200 and kind.startswith("text/plain; version=0.0.4")
    before = parse_metrics(text)
    assert before['retain_requests_total{outcome="ok"}'] == 0 and before["retain_requests_running"] == 0
    assert stream_chat(port, "count this one")[0] == 200
    assert exchange(port, post("/v1/chat/completions", b"{", port)).startswith(b"HTTP/1.1 400")
    after = parse_metrics(get(port, "/metrics")[2])
    moved = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    prompt_chars = len(prompt_of("count this one"))
    assert moved == {
        'retain_requests_total{outcome="ok"}': 1,
        'retain_requests_total{outcome="error"}': 1,
        "retain_prompt_tokens_total": prompt_chars,  # the stand-in's tokens are characters
        "retain_generation_tokens_total": 4,
        'retain_spec_drafted_tokens_total{method="ngram"}': 12,
        'retain_spec_accepted_tokens_total{drafter="ngram",method="ngram"}': 4,
        "retain_grounding_blocks_total": 1,
        "retain_grounding_constrained_tokens_total": 4,
    }


def test_label_values_are_escaped_in_the_metrics_text():
    family = serving.Family("retain_x_total", "counter", "A test.", [({"drafter": 'a"b\\c\nd'}, 2)])
    assert parse_metrics(serving.prometheus_text([family])) == {'retain_x_total{drafter="a\\"b\\\\c\\nd"}': 2.0}


def test_a_refused_body_is_never_read_as_the_next_request(serve):
    port = port_of(serve(StandInService()))
    raw = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
           "Content-Length: 99999999\r\n\r\nGET /v1/models HTTP/1.1\r\n\r\n").encode()
    response = exchange(port, raw)
    assert status_of(response) == 413 and response.count(b"HTTP/1.1 ") == 1


def test_a_post_that_is_not_json_is_refused(serve):
    port = port_of(serve(StandInService()))
    response = exchange(port, post("/v1/chat/completions", json.dumps(CHAT).encode(), port, "text/plain"))
    assert status_of(response) == 415 and b"application/json" in response


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.evil.example"])
def test_a_foreign_host_header_is_refused(serve, host):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 still sends its own name as Host."""
    port = port_of(serve(StandInService()))
    response = exchange(port, post("/v1/chat/completions", json.dumps(CHAT).encode(), port, host=host))
    assert status_of(response) == 403
    models = exchange(port, f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    assert status_of(models) == 403


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "localhost"])
def test_local_clients_are_served_without_cors_headers(serve, host):
    port = port_of(serve(StandInService()))
    request = post("/v1/chat/completions", json.dumps(CHAT).encode(), port, host=host.format(port=port))
    response = exchange(port, request)
    assert status_of(response) == 200 and b"access-control" not in response.lower()


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1180591620717411303424}', "seed"),
        (b'{"messages": [{"role": "user", "content": "\\ud83d"}]}', "messages"),
        (b'{"prompt": "x", "prediction": {"type": "content", "content": "a\\udc00"}}', "prediction.content"),
    ],
)
def test_odd_numbers_and_half_surrogates_are_client_errors(serve, raw, param):
    port = port_of(serve(StandInService()))
    path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
    response = exchange(port, post(path, raw, port))
    assert status_of(response) == 400
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]["param"] == param
    with pytest.raises(RequestError):
        parse_request(json.loads(raw), b"messages" in raw, "stand-in")


def test_a_half_sent_request_does_not_hold_its_thread(serve):
    port = port_of(serve(StandInService(), timeout=0.5))
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:  # a server that waits: recv times out
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        assert sock.recv(65536) == b""  # the server gave up on the headers and closed


def test_the_load_bench_counts_every_client_and_compares_each_text_with_its_request_alone(serve):
    server = serve(StandInService(), max_queued=2)
    answers, alone = serve_load.load(f"http://127.0.0.1:{port_of(server)}/v1", 16, 4, timeout=60)
    outcomes = Counter(answer.outcome for answer in answers)
    assert set(outcomes) <= {"answered", "429"} and outcomes["answered"] >= 1 and outcomes.total() == 16
    assert alone == {m: reply_alone(m) for m in serve_load.MESSAGES}
    report = serve_load.format_report(answers, alone)
    answered = outcomes["answered"]
    assert f"| answered | {answered} |" in report
    assert f"answered with the text of the same request alone: {answered} of {answered}" in report
    assert serve_load.percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0 and serve_load.percentile([1.0, 9.0], 0.99) == 9.0
