"""Many clients at once on `agent serve`: how many are answered, refused (429) or reset, and how long they wait.

    agent bench serve                                     # starts `agent serve` (a child process); 64 clients
    agent bench serve --clients 128 --max-queued 16       # past the queue: the rest get 429 with Retry-After
    agent bench serve --api-base http://127.0.0.1:8765/v1

Each client streams one greedy chat (a few messages in turn) and all start together. Each message is first sent
alone; a client's answer counts as `same` when its text is that lone answer's. Latency is from the request to the
end of its answer (or its 429), per outcome: p50 and p99 over the clients.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

from decoding.lab.bench import load_line
from decoding.serving.launch import SERVER_COMMAND, EmbeddedServer, EmbeddedServerError
from tools.command_line import parse_arguments

MESSAGES = ("Name a color.", "Count: one, two,", "Say hello.", "What is 2 + 2?")


@dataclass
class Answer:
    outcome: str  # "answered", "429", "reset", "timeout" or "error NNN"
    seconds: float
    text: str = ""


def stream_chat(api_base: str, message: str, max_tokens: int, timeout: float) -> Answer:
    """One streamed greedy chat; a connection reset or refusal is an outcome, not an exception."""
    url = urllib.parse.urlsplit(api_base)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=timeout)
    body = {"messages": [{"role": "user", "content": message}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True}
    started = time.monotonic()
    try:
        connection.request("POST", f"{url.path}/chat/completions", json.dumps(body),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read().decode()
    except ConnectionError:
        return Answer("reset", time.monotonic() - started)
    except TimeoutError:
        return Answer("timeout", time.monotonic() - started)
    finally:
        connection.close()
    seconds = time.monotonic() - started
    if response.status != 200:
        return Answer("429" if response.status == 429 else f"error {response.status}", seconds)
    events = [json.loads(block.removeprefix("data: ")) for block in payload.split("\n\n")
              if block.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices"))
    return Answer("answered", seconds, text)


def load(api_base: str, clients: int, max_tokens: int, timeout: float) -> tuple[list[Answer], dict[str, str]]:
    """(every client's answer, each message's answer alone)."""
    alone = {m: stream_chat(api_base, m, max_tokens, timeout).text for m in MESSAGES}
    start = threading.Barrier(clients)

    def client(i: int) -> Answer:
        start.wait()
        return stream_chat(api_base, MESSAGES[i % len(MESSAGES)], max_tokens, timeout)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(client, range(clients))), alone


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of `values` (share in [0, 1])."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def format_report(answers: list[Answer], alone: dict[str, str]) -> str:
    counts = Counter(a.outcome for a in answers)
    same = sum(a.text == alone[MESSAGES[i % len(MESSAGES)]] for i, a in enumerate(answers) if a.outcome == "answered")
    lines = ["| outcome | clients | p50 s | p99 s |", "|---|---|---|---|"]
    for outcome in sorted(counts):
        seconds = [a.seconds for a in answers if a.outcome == outcome]
        lines.append(f"| {outcome} | {counts[outcome]} | {percentile(seconds, 0.5):.2f} | "
                     f"{percentile(seconds, 0.99):.2f} |")
    lines.append(f"answered with the text of the same request alone: {same} of {counts['answered']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-base", metavar="URL", help="a running `agent serve` (default: start one here)")
    parser.add_argument("--clients", type=int, default=64, help="clients started together (default 64)")
    parser.add_argument("--max-tokens", type=int, default=8, help="new tokens per answer (default 8)")
    parser.add_argument("--max-queued", type=int, help="--max-queued of the started server (default: its own)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per request (default 600)")


def run(args: argparse.Namespace) -> int:
    if args.clients < 1 or args.max_tokens < 1:
        print("error: --clients and --max-tokens must be >= 1", file=sys.stderr)
        return 2
    print(load_line("start"))
    with ExitStack() as stack:
        api_base = args.api_base
        if api_base is None:
            queued = ["--max-queued", str(args.max_queued)] if args.max_queued is not None else []
            try:
                api_base = stack.enter_context(EmbeddedServer([*SERVER_COMMAND, *queued])).api_base
            except EmbeddedServerError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        try:
            answers, alone = load(api_base, args.clients, args.max_tokens, args.timeout)
        except OSError as e:
            print(f"error: the server at {api_base} did not answer a lone request: {e}", file=sys.stderr)
            return 1
    print(f"{args.clients} streamed greedy chats started together, {args.max_tokens} new tokens each, "
          f"through {api_base}")
    print(format_report(answers, alone))
    print(load_line("end"))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m decoding.lab.serve_load") -> int:
    return run(parse_arguments(argv, prog, __doc__.splitlines()[0], add_arguments))


if __name__ == "__main__":
    sys.exit(main())
