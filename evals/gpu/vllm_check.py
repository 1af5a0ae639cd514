"""Does a running `agent serve --engine vllm` have Retain's decoding on? A check to run against your own server.

    python -m evals.gpu.vllm_check http://HOST:8000/v1 [--log VLLM_LOG] [--tasks 8]

It writes the few-shot edit tasks of `evals/grounded.py` (greedy, the file sent in `vllm_xargs`) with grounding on
and off, every request at once (the server batches them), and prints whether the grounded blocks place on their
files (cut by max_tokens and closed at the cut) and whether grounding changed anything (it cannot where the plugin
is off). With `--log` (the vLLM log path `agent serve` prints), it also reads which of the plugin's parts are on,
the model runner, hybrid drafting's lookup line, and the cursor drafts per request. The server's speculation
counters come from its /metrics.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evals.grounded import Snippet, places, prompt_for, snippets

MAX_TOKENS = 64


@dataclass
class Check:
    tasks: int = 0
    grounded_place: int = 0
    free_place: int = 0
    grounding_changed: int = 0  # tasks whose text differs with grounding on
    plugin: str | None = None  # the plugin's parts, from its log line
    runner: str | None = None
    hybrid: str | None = None
    cursor_drafted: int = 0
    cursor_accepted: int = 0
    speculation: dict[str, float] = field(default_factory=dict)  # the server's counters: drafts, drafted, accepted


def reply(url: str, model: str, snippet: Snippet, grounding: str, max_tokens: int = MAX_TOKENS) -> str:
    body = {"model": model, "prompt": prompt_for(snippet), "max_tokens": max_tokens, "temperature": 0,
            "vllm_xargs": {"prediction": snippet.before, "grounding": grounding, "grounding_path": snippet.path}}
    request = urllib.request.Request(f"{url}/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)["choices"][0]["text"]


def served_model(url: str) -> str:
    with urllib.request.urlopen(f"{url}/models", timeout=30) as response:
        return json.load(response)["data"][0]["id"]


def speculation_counters(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=30) as response:
        text = response.read().decode()
    counters = {}
    for name in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
        found = re.search(rf"^vllm:spec_decode_{name}_total(?:{{[^}}]*}})? (\S+)$", text, re.M)
        counters[name] = float(found.group(1)) if found else 0.0
    return counters


def read_log(check: Check, log: str) -> None:
    """The plugin's own lines in vLLM's log."""
    if found := re.search(r"Retain's vLLM plugin: (.*)", log):
        check.plugin = found.group(1).strip()
    if found := re.search(r"Retain's vLLM plugin \(.*\) on vLLM's V1 model runner \((\w+)\)", log):
        check.runner = f"V1 ({found.group(1)})"
    if found := re.search(r"Retain hybrid drafting on vLLM's V1 model runner \(\w+\): (.*)", log):
        check.hybrid = found.group(1).strip()
    for drafted, accepted in re.findall(r"Retain cursor drafts for request \S+: (\d+) drafted, (\d+) accepted", log):
        check.cursor_drafted += int(drafted)
        check.cursor_accepted += int(accepted)


def run_check(url: str, tasks: int, log: Path | None = None) -> Check:
    model, check = served_model(url), Check()
    chosen = snippets()[:: max(1, len(snippets()) // tasks)][:tasks]
    with ThreadPoolExecutor(max_workers=2 * len(chosen) or 1) as pool:  # all at once: the server batches them
        written = [(pool.submit(reply, url, model, snippet, "edit"), pool.submit(reply, url, model, snippet, "off"))
                   for snippet in chosen]
    for snippet, (grounded_reply, free_reply) in zip(chosen, written, strict=True):
        grounded, free = grounded_reply.result(), free_reply.result()
        check.tasks += 1
        check.grounded_place += places(snippet, grounded)
        check.free_place += places(snippet, free)
        check.grounding_changed += grounded != free
    check.speculation = speculation_counters(url)
    if log is not None:
        if chosen:  # the plugin logs a request's cursor drafts at the step after it left: one more step
            reply(url, model, chosen[0], "off", max_tokens=1)
        read_log(check, log.read_text(encoding="utf-8", errors="replace"))
    return check


def report(check: Check) -> str:
    on = check.grounding_changed > 0 or check.plugin is not None
    lines = [
        f"Retain's plugin: {'on' if on else 'not seen'}" + (f" ({check.plugin})" if check.plugin else ""),
        f"model runner: {check.runner or 'unknown (pass --log)'}",
        f"grounded edit blocks that place: {check.grounded_place}/{check.tasks} "
        f"(without grounding: {check.free_place}/{check.tasks}; grounding changed {check.grounding_changed})",
        f"drafts: hybrid {check.hybrid or '-'}; cursor {check.cursor_accepted}/{check.cursor_drafted} accepted; "
        f"all sources {check.speculation.get('num_accepted_tokens', 0):.0f}/"
        f"{check.speculation.get('num_draft_tokens', 0):.0f} accepted",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.gpu.vllm_check", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--log", type=Path, help="vLLM's log (the path `agent serve --engine vllm` prints)")
    parser.add_argument("--tasks", type=int, default=8, help="few-shot edit tasks to write (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the check as JSON")
    args = parser.parse_args(argv)
    check = run_check(args.url.rstrip("/"), args.tasks, args.log)
    print(json.dumps(asdict(check)) if args.json else report(check))
    return 0 if check.tasks and check.grounded_place == check.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
