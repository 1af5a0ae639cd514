"""Drafters on code from projects the MTP head never trained on, free-running, through `agent serve`.

    agent bench held-out                                  # starts `agent serve` (a child process); 8 files
    agent bench held-out --api-base http://127.0.0.1:8765/v1 --methods mtp hybrid

Each prompt is the opening lines of a file from a project `python -m decoding.lab.train_mtp` holds out whole (the
evals' projects, `EVAL_PROJECTS`, as installed here), continued greedily by /v1/completions once per method, the
methods interleaved file by file. The server's `usage.speculation` gives decode forwards and accepted drafts. Per
method: mean accepted length (tokens per decode forward, pooled over the files), decode seconds, and whether its text
equals plain decoding's. Each prompt is sent once before the timed requests, so the prefix cache gives every method
the same (cached) prefill.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

from decoding.drafting.drafters import SPECULATION_METHODS
from decoding.lab.bench import load_line, thread_count
from decoding.lab.train_mtp import EVAL_PROJECTS, SourceFile, corpus, installed_roots
from decoding.serving.launch import SERVER_COMMAND, EmbeddedServer, EmbeddedServerError
from tools.command_line import parse_arguments

PROMPT_LINES = 60  # lines of the file before the continuation: enough for the file's style and names
MIN_LINES = 2 * PROMPT_LINES
MIN_FUNCTIONS = 3  # code, not a data table


@dataclass
class MethodTotals:
    method: str
    tokens: int = 0
    steps: int = 0  # decode forwards
    accepted: int = 0
    seconds: float = 0.0
    matches_plain: bool = True
    per_file: list[float] = field(default_factory=list)  # mean accepted length per file

    @property
    def mean_accepted_length(self) -> float:
        return (self.accepted + self.steps) / self.steps if self.steps else 0.0


def is_code(text: str) -> bool:
    return text.count("\n") >= MIN_LINES and len(re.findall(r"^\s*def ", text, re.MULTILINE)) >= MIN_FUNCTIONS


def held_out_files(count: int) -> list[SourceFile]:
    """`count` code files from the held-out evals' projects, chosen by a hash of their names."""
    files = [f for f in corpus(installed_roots()) if f.project in EVAL_PROJECTS]
    code = [f for f in files if is_code(f.path.read_text(errors="replace"))]
    return sorted(code, key=lambda f: hashlib.sha256(f.name.encode()).hexdigest())[:count]


def prompt_for(source: SourceFile) -> str:
    head = "".join(source.path.read_text(errors="replace").splitlines(keepends=True)[:PROMPT_LINES])
    return f"File {source.name}:\n```python\n{head}"


def complete(api_base: str, prompt: str, max_tokens: int, speculation: str, timeout: float) -> tuple[dict, float]:
    """One greedy /v1/completions request: the response and its wall seconds."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "speculation": speculation}
    request = urllib.request.Request(
        f"{api_base.rstrip('/')}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.load(response)
    return answer, time.perf_counter() - start


def measure(
    api_base: str, files: Sequence[SourceFile], methods: Sequence[str], max_tokens: int, timeout: float
) -> list[MethodTotals]:
    totals = {m: MethodTotals(m) for m in methods}
    for i, source in enumerate(files, 1):
        prompt = prompt_for(source)
        complete(api_base, prompt, 1, "off", timeout)  # prefill once: every method then reads it from the cache
        texts: dict[str, str] = {}
        for method in methods:
            answer, seconds = complete(api_base, prompt, max_tokens, method, timeout)
            texts[method] = answer["choices"][0]["text"]
            usage, t = answer["usage"], totals[method]
            spec = usage.get("speculation") or {}
            steps = max(spec.get("target_forwards", 1) - 1, 1)  # the first forward is the prompt's
            t.tokens += usage["completion_tokens"]
            t.steps += steps
            t.accepted += spec.get("accepted", 0)
            t.seconds += seconds
            t.per_file.append(round((spec.get("accepted", 0) + steps) / steps, 3))
        for method in methods:
            totals[method].matches_plain &= texts[method] == texts.get("off", texts[method])
        row = ", ".join(f"{m} {totals[m].per_file[-1]:.2f}" for m in methods)
        print(f"[{i}/{len(files)}] {source.name}: tokens per decode forward {row}", file=sys.stderr, flush=True)
    return list(totals.values())


def format_table(rows: Sequence[MethodTotals]) -> str:
    plain = next((r for r in rows if r.method == "off"), None)
    lines = [
        "| method | tokens | decode forwards | tokens / forward | seconds | time vs off | text = off |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{plain.seconds / r.seconds:.2f}x" if plain and r.seconds else ""
        lines.append(
            f"| {r.method} | {r.tokens} | {r.steps} | {r.mean_accepted_length:.2f} | {r.seconds:.1f} | {ratio} | "
            f"{'yes' if r.matches_plain else 'no'} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-base", metavar="URL", help="a running `agent serve` (default: start one here)")
    parser.add_argument("--files", type=int, default=8, help="held-out files to continue (default 8)")
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per continuation (default 128)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[m for m in SPECULATION_METHODS if m != "auto"],
        default=["off", "ngram", "mtp", "hybrid"],
        help="speculation methods, in this order per file (default: off ngram mtp hybrid)",
    )
    parser.add_argument("--threads", type=thread_count, default=0, help="threads of the started server (default: auto)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per request (default 600)")
    parser.add_argument("--json", metavar="OUT", help="also write the totals as JSON to OUT")


def run(args: argparse.Namespace) -> int:
    if args.files < 1 or args.max_tokens < 1:
        print("error: --files and --max-tokens must be >= 1", file=sys.stderr)
        return 2
    files = held_out_files(args.files)
    if not files:
        print(f"error: no file of {MIN_LINES}+ lines from {sorted(EVAL_PROJECTS)} is installed here", file=sys.stderr)
        return 2
    print(load_line("start"))
    with ExitStack() as stack:
        api_base = args.api_base
        if api_base is None:
            command = [*SERVER_COMMAND, *(["--threads", str(args.threads)] if args.threads else [])]
            try:
                api_base = stack.enter_context(EmbeddedServer(command)).api_base
            except EmbeddedServerError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        try:
            rows = measure(api_base, files, args.methods, args.max_tokens, args.timeout)
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            print(f"error: the server at {api_base} did not answer: {e}", file=sys.stderr)
            return 1
    print(
        f"{len(files)} files of {', '.join(sorted(EVAL_PROJECTS))} (held out of the MTP head's training), "
        f"first {PROMPT_LINES} lines each, {args.max_tokens} new tokens, greedy, through {api_base}"
    )
    print(format_table(rows))
    print(load_line("end"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) | {"mean_accepted_length": r.mean_accepted_length} for r in rows], f, indent=2)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m decoding.lab.held_out") -> int:
    return run(parse_arguments(argv, prog, __doc__.splitlines()[0], add_arguments))


if __name__ == "__main__":
    sys.exit(main())
