"""Side-by-side decoding benchmark: `python -m decoding.bench [--json OUT]`.

Runs every method on the same model, prompts and max tokens in one process, back to back per workload, so the
ratios hold even when other work shares the CPU (each method runs `--repeats` times interleaved, best time
kept): plain greedy (ours), ours with each drafter, and transformers'
own `generate(prompt_lookup_num_tokens=...)` as the peer. Times are end to end (prefill included), greedy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from decoding.drafters import SPECULATION_METHODS, make_drafter
from decoding.engine import generate
from decoding.model import load_model
from decoding.target import make_target
from decoding.workloads import Workload, standard_workloads

PEER = "transformers-pld"
DRAFTED_METHODS = [m for m in SPECULATION_METHODS if m not in ("off", "auto")]  # "auto" names one of these


@dataclass
class Row:
    dtype: str
    threads: int
    workload: str
    method: str
    tokens: int
    seconds: float
    tokens_per_s: float
    speedup_vs_plain: float = 0.0
    ratio_vs_peer: float = 0.0
    mean_accepted_length: float = 0.0
    matches_plain: bool = True


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _ours(target, ids, sources, max_new, drafter, eos) -> tuple[list[int], float, float]:
    gen, seconds = _timed(
        lambda: generate(target, ids, max_new, drafter=drafter, sources=sources, stop_ids=frozenset({eos}))
    )
    return gen.tokens, seconds, gen.stats.mean_accepted_length


def _peer(hf_model, ids, max_new, eos, lookup: int) -> tuple[list[int], float, float]:
    inputs = torch.tensor([ids])

    def run():
        with torch.inference_mode():
            return hf_model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=max_new,
                do_sample=False,
                prompt_lookup_num_tokens=lookup,
                eos_token_id=eos,
                pad_token_id=eos,
            )

    out, seconds = _timed(run)
    tokens = out[0, len(ids) :].tolist()
    if tokens and tokens[-1] == eos:
        tokens = tokens[:-1]
    return tokens, seconds, 0.0


def bench_workload(
    loaded, target, workload: Workload, max_new: int, dtype: str, threads: int, lookup: int, repeats: int = 1
) -> list[Row]:
    tok = loaded.tokenizer
    ids = tok(workload.prompt).input_ids
    sources = [tok(workload.prediction, add_special_tokens=False).input_ids] if workload.prediction else []
    eos = tok.eos_token_id
    runs = {"plain": lambda: _ours(target, ids, sources, max_new, None, eos)}
    for method in DRAFTED_METHODS:  # a fresh drafter per run: drafters may follow one generation
        runs[method] = lambda m=method: _ours(target, ids, sources, max_new, make_drafter(m, tokenizer=tok), eos)
    runs[PEER] = lambda: _peer(loaded.model, ids, max_new, eos, lookup)
    results = {}
    for _ in range(repeats):  # interleaved, best of `repeats`: other work on the CPU only ever adds time
        for name, run in runs.items():
            tokens, seconds, mal = run()
            if name not in results or seconds < results[name][1]:
                results[name] = (tokens, seconds, mal)
    plain_tokens, plain_s, _ = results["plain"]
    rows = []
    for name, (tokens, seconds, mal) in results.items():
        tps = len(tokens) / seconds
        rows.append(
            Row(
                dtype,
                threads,
                workload.name,
                name,
                len(tokens),
                round(seconds, 2),
                round(tps, 2),
                mean_accepted_length=round(mal, 2),
                matches_plain=tokens == plain_tokens,
            )
        )
    plain_tps, peer_tps = rows[0].tokens_per_s, rows[-1].tokens_per_s
    for row in rows:
        row.speedup_vs_plain = round(row.tokens_per_s / plain_tps, 2)
        row.ratio_vs_peer = round(row.tokens_per_s / peer_tps, 2)
    return rows


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'dtype':9} {'thr':>3} {'workload':20} {'method':17} {'tokens':>6} {'sec':>7} {'tok/s':>7} "
        f"{'vs plain':>8} {'vs peer':>8} {'acc len':>7} match"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.dtype:9} {r.threads:>3} {r.workload:20} {r.method:17} {r.tokens:>6} {r.seconds:>7.2f} "
            f"{r.tokens_per_s:>7.2f} {r.speedup_vs_plain:>7.2f}x {r.ratio_vs_peer:>7.2f}x "
            f"{r.mean_accepted_length or '':>7} {'yes' if r.matches_plain else 'NO'}"
        )
    return "\n".join(lines)


def llama_cpp_note() -> str:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed: the ratio to llama.cpp was not measured."
    return "llama-cpp-python is installed but not yet wired into this benchmark."


def run_bench(
    dtypes: Sequence[str] = ("float32",),
    threads: Sequence[int] = (2,),
    max_new_tokens: int = 256,
    model: str | None = None,
    lookup: int = 10,
    repeats: int = 2,
    echo=print,
) -> list[Row]:
    """Benchmark every (dtype, threads) pair over the standard workloads; prints each table as it completes."""
    rows: list[Row] = []
    workloads = standard_workloads()
    for dtype in dtypes:
        loaded = load_model(model, dtype)
        target = make_target(loaded.model)
        for n in threads:
            torch.set_num_threads(n)
            bench_workload(loaded, target, workloads[-1], 8, dtype, n, lookup)  # warm-up
            for workload in workloads:
                rows += bench_workload(loaded, target, workload, max_new_tokens, dtype, n, lookup, repeats)
                echo(format_table(rows[-(len(DRAFTED_METHODS) + 2) :]).split("\n", 2)[-1])
    return rows


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `agent bench decode`, shared with `python -m decoding.bench`."""
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    parser.add_argument("--model", default=None, metavar="PATH", help="local HF model directory or .gguf file")
    parser.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1], help="torch CPU thread counts to compare")
    parser.add_argument("--max-tokens", type=int, default=256, help="new tokens per generation (default: 256)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per method, best time kept (default: 2)")
    parser.add_argument("--lookup", type=int, default=10, help="prompt_lookup_num_tokens for the transformers peer")


def bench_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark for options added by `add_bench_arguments`; exit status 1 if any output diverged."""
    if min(args.max_tokens, args.repeats, *args.threads) < 1:
        print("error: --max-tokens, --repeats and --threads must be >= 1", file=sys.stderr)
        return 2
    print(format_table([]))
    rows = run_bench(args.dtype, args.threads, args.max_tokens, args.model, args.lookup, args.repeats)
    print()
    print(format_table(rows))
    print(llama_cpp_note())
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    return 0 if all(r.matches_plain for r in rows if r.method != PEER) else 1


def main(argv: Sequence[str] | None = None, prog: str = "python -m decoding.bench") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_bench_arguments(parser)
    return bench_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
