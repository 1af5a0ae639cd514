"""The local server takes only what a local OpenAI client sends, and a client that leaves or stalls costs nothing.

A stand-in service replaces the model (the HTTP layer is what is under test), so these run in milliseconds.
"""

import json
import socket
import threading
import time

import pytest

from decoding.engine.generation import SpecStats
from decoding.serving import server as serving
from decoding.serving.server import RequestError, Usage, make_server, parse_request

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class StandInService:
    """Answers "ok" at once, or (with `hold`) generates until the job is cancelled or 20 s pass."""

    name = "stand-in"

    def __init__(self, hold: bool = False):
        self.hold = hold
        self.jobs: list = []

    def submit(self, job) -> None:
        self.jobs.append(job)
        threading.Thread(target=self._work, args=(job,), daemon=True).start()

    def _work(self, job) -> None:
        deadline = time.monotonic() + 20
        while self.hold and not job.cancelled.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        job.events.put(("delta", "ok"))
        job.events.put(("done", ("stop", Usage(3, 0, 1, SpecStats(method="off")))))


@pytest.fixture
def serve(monkeypatch):
    servers = []

    def start(service, timeout: float | None = None):
        if timeout is not None:
            monkeypatch.setattr(serving.Handler, "timeout", timeout)
        server = make_server(service, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


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


def test_a_non_streamed_client_that_hangs_up_stops_its_generation(serve):
    service = StandInService(hold=True)
    port = serve(service)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post("/v1/chat/completions", json.dumps(CHAT).encode(), port))
        deadline = time.monotonic() + 5
        while not service.jobs and time.monotonic() < deadline:
            time.sleep(0.01)
    deadline = time.monotonic() + 5
    while not service.jobs[0].cancelled.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.jobs[0].cancelled.is_set()  # the worker is free for the next request


def test_a_refused_body_is_never_read_as_the_next_request(serve):
    port = serve(StandInService())
    raw = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
           "Content-Length: 99999999\r\n\r\nGET /v1/models HTTP/1.1\r\n\r\n").encode()
    response = exchange(port, raw)
    assert status_of(response) == 413 and response.count(b"HTTP/1.1 ") == 1


def test_a_post_that_is_not_json_is_refused(serve):
    port = serve(StandInService())
    response = exchange(port, post("/v1/chat/completions", json.dumps(CHAT).encode(), port, "text/plain"))
    assert status_of(response) == 415 and b"application/json" in response


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.evil.example"])
def test_a_foreign_host_header_is_refused(serve, host):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 still sends its own name as Host."""
    port = serve(StandInService())
    response = exchange(port, post("/v1/chat/completions", json.dumps(CHAT).encode(), port, host=host))
    assert status_of(response) == 403
    models = exchange(port, f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    assert status_of(models) == 403


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "localhost"])
def test_local_clients_are_served_without_cors_headers(serve, host):
    port = serve(StandInService())
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
    port = serve(StandInService())
    path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
    response = exchange(port, post(path, raw, port))
    assert status_of(response) == 400
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]["param"] == param
    with pytest.raises(RequestError):
        parse_request(json.loads(raw), b"messages" in raw, "stand-in")


def test_a_half_sent_request_does_not_hold_its_thread(serve):
    port = serve(StandInService(), timeout=0.5)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        assert sock.recv(65536) == b""  # the server gave up on the headers and closed
    assert time.monotonic() - started < 5
