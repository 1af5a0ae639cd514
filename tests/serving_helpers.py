"""The embedded server in tests: a stand-in engine, streamed chats from many threads at once, /metrics read strictly."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from decoding.engine.generation import SpecStats
from decoding.engine.grounding import GroundingStats
from decoding.serving.chat import gemma_chat_prompt
from decoding.serving.server import Job, Usage

SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


class StandInService:
    """Answers with the prompt's last words, a word per token, as the engine would: one job at a time, stopping when
    the job is cancelled. Until `gate` is set each job waits before its first token (at most 20 s)."""

    name = "stand-in"

    def __init__(self, hold: bool = False):
        self.ran: list[Job] = []
        self.gate = threading.Event()
        if not hold:
            self.gate.set()

    def warm_up(self) -> None:
        pass

    def run(self, job: Job) -> tuple[str, Usage]:
        self.ran.append(job)
        deadline = time.monotonic() + 20
        while not self.gate.wait(0.01) and not job.cancelled.is_set() and time.monotonic() < deadline:
            pass
        words = job.prompt.split()[-job.max_tokens:]
        sent = 0
        for word in words:
            if job.cancelled.is_set():
                break
            job.events.put(("delta", word + " "))
            sent += 1
        stats = SpecStats(method="ngram", drafted=3 * sent, accepted=sent, accepted_by={"ngram": sent})
        return "stop", Usage(len(job.prompt), 0, sent, stats, grounding=GroundingStats(1, sent, 0))


def prompt_of(content: str) -> str:
    return gemma_chat_prompt([{"role": "user", "content": content}])


def reply_alone(content: str, max_tokens: int = 4) -> str:
    """What the stand-in answers to one chat message."""
    return "".join(word + " " for word in prompt_of(content).split()[-max_tokens:])


def stream_chat(port: int, content: str, max_tokens: int = 4) -> tuple[int, dict[str, str], str]:
    """(status, headers, text) of one streamed greedy chat: the streamed content, or the body of a non-200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True}
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read().decode()
        headers = dict(response.getheaders())
    finally:
        connection.close()
    if response.status != 200:
        return response.status, headers, payload
    lines = [block.removeprefix("data: ") for block in payload.split("\n\n") if block]
    assert lines[-1] == "[DONE]", payload
    events = [json.loads(line) for line in lines[:-1]]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    return 200, headers, text


def at_once(count: int, call: Callable[[int], object]) -> list:
    """call(0) … call(count - 1), each on its own thread, all started together; a raised error fails the test."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(call, range(count)))


def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, Content-Type, body) of a GET."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format 0.0.4, checked line by line: every sample follows its family's HELP and TYPE, counters
    end in _total. Keys are `name{label="value",...}` with labels sorted (`name` alone without labels)."""
    assert text.endswith("\n")
    kinds: dict[str, str] = {}
    helped: set[str] = set()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line.removeprefix("# HELP ").partition(" ")
            assert help_text and name not in helped, line
            helped.add(name)
        elif line.startswith("# TYPE "):
            name, kind = line.removeprefix("# TYPE ").split(" ")
            assert name in helped and name not in kinds and kind in ("counter", "gauge"), line
            assert kind != "counter" or name.endswith("_total"), line
            kinds[name] = kind
        else:
            match = SAMPLE.fullmatch(line)
            assert match and match[1] in kinds, line
            labels = LABEL.findall(match[2] or "")
            assert ",".join(f'{k}="{v}"' for k, v in labels) == (match[2] or ""), line
            key = match[1] + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}" if labels else "")
            assert key not in samples, line
            samples[key] = float(match[3])
    return samples
