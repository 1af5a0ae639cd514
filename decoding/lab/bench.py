"""Side-by-side decoding benchmark: `python -m decoding.lab.bench [--json OUT]`.

Runs every method on the same model, prompts and max tokens in one process, back to back per workload, so the
ratios hold even when other work shares the CPU (each method runs `--repeats` times interleaved, best time
kept): plain greedy (ours), ours with each drafter (prompt lookup, the MTP head at each `--mtp-k`, hybrid), and
transformers' own `generate(prompt_lookup_num_tokens=...)` as the peer, greedy. Each row has two speeds: end to
end (prefill included) and decode (after the first token). The prompt's forward is the same work for every method
and no drafter can shorten it; on a long prompt and a 2-core CPU it takes seconds, so the decode columns are what
drafting changes. The peer's prefill is timed by its own `generate(max_new_tokens=1)`. For drafting rows the table
adds the acceptance at each draft position (free-running: the draft against the tokens the target actually
produced), which drafter the accepted tokens came from, and the drafter's own time per drafted token.

After each (dtype, threads) table come the engine's own figures: the verify-cost curve (the time of a greedy verify
forward of k+1 rows, argmax tokens included, ÷ that of one row: what drafted tokens cost when they are rejected)
and the prefix cache's time to the first token of a prompt sharing a 2,000-token prefix with the prompt before,
cold ÷ warm.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import torch

from decoding.drafting.base import Draft, DraftContext, Drafter
from decoding.drafting.drafters import make_drafter
from decoding.drafting.mtp import MTPDrafter, MTPError, shared_head
from decoding.engine.generation import Generation, GenerationRequest, greedy_tokens
from decoding.engine.loading import load_model
from decoding.engine.prefix_cache import PrefixCachingTarget
from decoding.engine.target import GemmaTarget, Target, make_target
from decoding.engine.threads import pin_threads
from decoding.lab.workloads import Workload, shared_prefix_prompts, standard_workloads
from decoding.serving.chat import stop_token_ids
from tools.command_line import parse_arguments

PEER = "transformers-pld"


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
    prefill_s: float = 0.0  # to the first token
    decode_tokens_per_s: float = 0.0  # tokens after the first, per second after it
    decode_speedup_vs_plain: float = 0.0
    decode_ratio_vs_peer: float = 0.0
    mean_accepted_length: float = 0.0
    matches_plain: bool = True
    acceptance_at: list[float] = field(default_factory=list)  # per draft position, free-running
    accepted_by: dict[str, int] = field(default_factory=dict)
    draft_ms_per_token: float = 0.0  # the drafter's own time per drafted token


@dataclass
class Timed:
    """Wraps a drafter to add up the time it spends proposing."""

    drafter: Drafter
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.drafter.name

    def propose(self, context: DraftContext, k: int) -> Draft:
        start = time.perf_counter()
        draft = self.drafter.propose(context, k)
        self.seconds += time.perf_counter() - start
        return draft


@dataclass
class Result:
    tokens: list[int]
    seconds: float
    prefill_seconds: float
    mean_accepted_length: float = 0.0
    acceptance_at: list[float] = field(default_factory=list)
    accepted_by: dict[str, int] = field(default_factory=dict)
    draft_ms_per_token: float = 0.0


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


DrafterFactory = Callable[[], Drafter | None]


def _ours(target, ids, sources, max_new, make_drafter: DrafterFactory, stop_ids: frozenset[int]) -> Result:
    drafter = make_drafter()  # a fresh one per run: drafters may follow one generation
    timed = Timed(drafter) if drafter is not None else None
    request = GenerationRequest(list(ids), max_new, drafter=timed, sources=sources, stop_ids=stop_ids)
    gen = Generation(target, request)
    start = time.perf_counter()
    first = None
    for _ in gen:
        first = first or time.perf_counter()
    end = time.perf_counter()
    stats = gen.stats
    cost = 1000 * timed.seconds / stats.drafted if timed and stats.drafted else 0.0
    acceptance = [round(a, 2) for a in stats.acceptance_at()]
    prefill = (first or end) - start
    by = dict(stats.accepted_by)
    return Result(gen.tokens, end - start, prefill, stats.mean_accepted_length, acceptance, by, cost)


def _peer(hf_model, ids, max_new, stop_ids: frozenset[int], lookup: int) -> Result:
    inputs = torch.tensor([ids])

    def run(new: int, lookup: int | None):
        with torch.inference_mode():
            return hf_model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=new,
                do_sample=False,
                prompt_lookup_num_tokens=lookup,
                eos_token_id=sorted(stop_ids),
                pad_token_id=min(stop_ids),
            )

    _, prefill = _timed(lambda: run(1, None))
    out, seconds = _timed(lambda: run(max_new, lookup))
    tokens = out[0, len(ids) :].tolist()
    if tokens and tokens[-1] in stop_ids:
        tokens = tokens[:-1]
    return Result(tokens, seconds, min(prefill, seconds))


METHODS = ("plain", "ngram", "cursor", "mtp", "hybrid", PEER)
VERIFY_KS = (0, 1, 2, 4, 8, 16)
PREFIX_TOKENS = 2000


def verify_cost(
    target: Target, ids: Sequence[int], ks: Sequence[int] = VERIFY_KS, repeats: int = 3
) -> dict[int, float]:
    """Seconds of a greedy verify forward of k+1 rows and their argmax tokens, after the prompt `ids` (best of
    `repeats`, the ks interleaved so load falls on all alike); the rows are the prompt's own last max(ks)+1 tokens."""
    rows = max(ks) + 1
    target.reset(len(ids) + 1)
    target.forward(list(ids[:-rows]))
    base = target.length
    best: dict[int, float] = {}
    for _ in range(repeats):
        for k in ks:
            target.rollback(base)
            _, seconds = _timed(lambda k=k: greedy_tokens(target, target.forward(list(ids[-rows:][: k + 1]))))
            best[k] = min(seconds, best.get(k, seconds))
    return best


@dataclass
class PrefixFigures:
    prompt_tokens: int
    cached_tokens: int
    cold_s: float  # time to the first token of the first prompt, nothing cached
    warm_s: float  # the same for the second prompt, its shared prefix cached

    @property
    def ratio(self) -> float:
        return self.cold_s / self.warm_s


def prefix_cache_figures(
    target: GemmaTarget, tokenizer, tokens: int = PREFIX_TOKENS, repeats: int = 2
) -> PrefixFigures:
    """Time to the first token of two prompts sharing a `tokens`-token file, in turn through a fresh prefix cache
    (best of `repeats` each)."""
    first, second = (tokenizer(p).input_ids for p in shared_prefix_prompts(tokenizer, tokens))
    cold = warm = float("inf")
    for _ in range(repeats):
        cached = PrefixCachingTarget(target)
        cold = min(cold, first_token_seconds(cached, first))
        warm = min(warm, first_token_seconds(cached, second))
    return PrefixFigures(len(second), cached.reused, cold, warm)


def first_token_seconds(target: Target, ids: list[int]) -> float:
    start = time.perf_counter()
    for _ in Generation(target, GenerationRequest(ids, 1)):
        pass
    return time.perf_counter() - start


def format_engine(costs: dict[int, float], prefix: PrefixFigures | None) -> str:
    """The verify-cost curve and the prefix cache's first-token times as two lines."""
    one = costs[0]
    curve = ", ".join(f"k={k} {seconds / one:.2f}" for k, seconds in costs.items())
    lines = [f"verify cost (a greedy forward of k+1 rows ÷ one row, {1000 * one:.0f} ms): {curve}"]
    if prefix is not None:
        lines.append(
            f"prefix cache: first token of a {prefix.prompt_tokens}-token prompt, {prefix.cached_tokens} of them "
            f"cached: {prefix.warm_s:.2f} s vs {prefix.cold_s:.2f} s uncached ({prefix.ratio:.1f}x sooner)"
        )
    return "\n".join(lines)


def drafter_factories(
    target, tokenizer, methods: Sequence[str], mtp_k: Sequence[int]
) -> dict[str, DrafterFactory]:
    """Row name -> a function making a fresh drafter (None = plain); MTP rows only when the head fits the target."""
    factories: dict[str, DrafterFactory] = {}
    for method in methods:
        if method == "mtp":
            try:
                make_drafter("mtp", target=target)
            except MTPError:
                continue
            for k in mtp_k:
                name = "mtp" if len(mtp_k) == 1 else f"mtp-k{k}"
                factories[name] = partial(_mtp_with_k, target, k)
        elif method != PEER:
            speculation = "off" if method == "plain" else method
            factories[method] = partial(make_drafter, speculation, tokenizer=tokenizer, target=target)
    return factories


def _mtp_with_k(target, k: int) -> MTPDrafter:
    drafter = MTPDrafter(shared_head(target))
    drafter.k_max = k
    return drafter


def bench_workload(
    loaded,
    target,
    workload: Workload,
    max_new: int,
    dtype: str,
    threads: int,
    lookup: int,
    repeats: int = 1,
    methods: Sequence[str] = METHODS,
    mtp_k: Sequence[int] = (MTPDrafter.k_max_default,),
) -> list[Row]:
    tok = loaded.tokenizer
    ids = tok(workload.prompt).input_ids
    sources = [tok(workload.prediction, add_special_tokens=False).input_ids] if workload.prediction else []
    stop_ids = stop_token_ids(tok)
    factories = drafter_factories(target, tok, ["plain", *methods], mtp_k)
    runs: dict[str, Callable[[], Result]] = {
        name: partial(_ours, target, ids, sources, max_new, factory, stop_ids) for name, factory in factories.items()
    }
    if PEER in methods:
        runs[PEER] = lambda: _peer(loaded.model, ids, max_new, stop_ids, lookup)
    results: dict[str, Result] = {}
    for _ in range(repeats):  # interleaved, best of `repeats`: other work on the CPU only ever adds time
        for name, run in runs.items():
            result = run()
            if name not in results or result.seconds < results[name].seconds:
                results[name] = result
    plain_tokens = results["plain"].tokens
    rows = []
    for name, r in results.items():
        rows.append(
            Row(
                dtype,
                threads,
                workload.name,
                name,
                len(r.tokens),
                round(r.seconds, 2),
                round(len(r.tokens) / r.seconds, 2),
                prefill_s=round(r.prefill_seconds, 2),
                decode_tokens_per_s=_decode_rate(r),
                mean_accepted_length=round(r.mean_accepted_length, 2),
                matches_plain=r.tokens == plain_tokens,
                acceptance_at=r.acceptance_at,
                accepted_by=r.accepted_by,
                draft_ms_per_token=round(r.draft_ms_per_token, 2),
            )
        )
    plain_tps = rows[0].tokens_per_s
    peer = results.get(PEER)
    peer_tps = len(peer.tokens) / peer.seconds if peer else 0.0
    for row in rows:
        row.speedup_vs_plain = round(row.tokens_per_s / plain_tps, 2)
        row.ratio_vs_peer = round(row.tokens_per_s / peer_tps, 2) if peer_tps else 0.0
    plain_decode = rows[0].decode_tokens_per_s
    peer_decode = next((r.decode_tokens_per_s for r in rows if r.method == PEER), 0.0)
    for row in rows:
        row.decode_speedup_vs_plain = round(row.decode_tokens_per_s / plain_decode, 2) if plain_decode else 0.0
        row.decode_ratio_vs_peer = round(row.decode_tokens_per_s / peer_decode, 2) if peer_decode else 0.0
    return rows


def _decode_rate(result: Result) -> float:
    decode_seconds = result.seconds - result.prefill_seconds
    return round((len(result.tokens) - 1) / decode_seconds, 2) if decode_seconds > 0 else 0.0


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'dtype':9} {'thr':>3} {'workload':24} {'method':17} {'tokens':>6} {'prefill':>7} {'sec':>6} {'tok/s':>6} "
        f"{'vs plain':>8} {'vs peer':>7} | {'decode':>6} {'vs plain':>8} {'vs peer':>7} | "
        f"{'acc len':>7} match  {'draft ms':>8}  acceptance at 1,2,..  accepted by"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        at = " ".join(f"{a:.2f}" for a in r.acceptance_at[:6])
        by = ", ".join(f"{k} {v}" for k, v in sorted(r.accepted_by.items()))
        lines.append(
            f"{r.dtype:9} {r.threads:>3} {r.workload:24} {r.method:17} {r.tokens:>6} {r.prefill_s:>7.2f} "
            f"{r.seconds:>6.2f} {r.tokens_per_s:>6.2f} {r.speedup_vs_plain:>7.2f}x {r.ratio_vs_peer:>6.2f}x | "
            f"{r.decode_tokens_per_s:>6.2f} {r.decode_speedup_vs_plain:>7.2f}x {r.decode_ratio_vs_peer:>6.2f}x | "
            f"{r.mean_accepted_length or '':>7} {'yes' if r.matches_plain else 'NO ':5} "
            f"{r.draft_ms_per_token or '':>8}  {at:20}  {by}"
        )
    return "\n".join(lines)


def llama_cpp_note() -> str:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed: the ratio to llama.cpp was not measured."
    return "llama-cpp-python is installed but not yet wired into this benchmark."


def mtp_held_out_note(methods: Sequence[str]) -> str:
    """The shipped head's teacher-forced figures on held-out code (from its manifest), beside the free-running rows."""
    if not {"mtp", "hybrid"} & set(methods):
        return ""
    from decoding.drafting.mtp import DEFAULT_MANIFEST

    held_out = json.loads(DEFAULT_MANIFEST.read_text())["training"]["held_out"]
    at = " ".join(f"{a:.2f}" for a in held_out["acceptance_at"])
    by_k = ", ".join(f"k={k} {v:.2f}" for k, v in held_out["expected_accepted_length_by_k"].items())
    return (
        f"MTP head, teacher-forced on {held_out['positions']} positions of held-out stdlib code (its manifest): "
        f"acceptance at 1,2,.. {at}; mean accepted length {by_k}"
    )


def rounding_note(rows: Sequence[Row]) -> str:
    """Why bfloat16 rows may not match plain: a verify forward sums k rows in another order than k single rows."""
    if not any(r.dtype == "bfloat16" and not r.matches_plain for r in rows if r.method != PEER):
        return ""
    return (
        "bfloat16 rows marked NO: a verify forward over several rows rounds differently from one-row forwards, so a "
        "near tie can flip the argmax and the text then diverges; float32 rows must and do match."
    )


def run_bench(
    dtypes: Sequence[str] = ("float32",),
    threads: Sequence[int] = (2,),
    max_new_tokens: int = 256,
    model: str | None = None,
    lookup: int = 10,
    repeats: int = 2,
    echo=print,
    methods: Sequence[str] = METHODS,
    mtp_k: Sequence[int] = (MTPDrafter.k_max_default,),
    workloads: Sequence[str] | None = None,
) -> list[Row]:
    """Benchmark every (dtype, threads) pair over the standard workloads; prints each table as it completes."""
    rows: list[Row] = []
    chosen = [w for w in standard_workloads() if not workloads or any(w.name.startswith(p) for p in workloads)]
    for dtype in dtypes:
        loaded = load_model(model, dtype)
        target = make_target(loaded.model)
        for n in threads:
            pin_threads(n)
            torch.set_num_threads(n)  # for the transformers peer; our generations set it themselves
            bench_workload(loaded, target, chosen[-1], 8, dtype, n, lookup, 1, methods, mtp_k)  # warm-up
            for workload in chosen:
                new = bench_workload(
                    loaded, target, workload, max_new_tokens, dtype, n, lookup, repeats, methods, mtp_k
                )
                rows += new
                echo(format_table(new).split("\n", 2)[-1])
            costs = verify_cost(target, loaded.tokenizer(chosen[0].prompt).input_ids)
            cached = prefix_cache_figures(target, loaded.tokenizer) if isinstance(target, GemmaTarget) else None
            echo(format_engine(costs, cached))
    return rows


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `agent bench decode`, shared with `python -m decoding.lab.bench`."""
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    parser.add_argument("--model", default=None, metavar="PATH", help="local HF model directory or .gguf file")
    parser.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1], help="torch CPU thread counts to compare")
    parser.add_argument("--max-tokens", type=int, default=256, help="new tokens per generation (default: 256)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per method, best time kept (default: 2)")
    parser.add_argument("--lookup", type=int, default=10, help="prompt_lookup_num_tokens for the transformers peer")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS[1:], default=list(METHODS[1:]), help="drafters compared with plain"
    )
    parser.add_argument(
        "--mtp-k",
        nargs="+",
        type=int,
        default=[MTPDrafter.k_max_default],
        help=f"MTP draft lengths, one row each (default: {MTPDrafter.k_max_default})",
    )
    parser.add_argument(
        "--workloads", nargs="+", default=None, metavar="PREFIX", help="only workloads whose name starts so"
    )


def bench_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark for options added by `add_bench_arguments`; exit status 1 if a float32 output diverged."""
    if min(args.max_tokens, args.repeats, *args.threads, *args.mtp_k) < 1:
        print("error: --max-tokens, --repeats, --threads and --mtp-k must be >= 1", file=sys.stderr)
        return 2
    print(format_table([]))
    rows = run_bench(
        args.dtype,
        args.threads,
        args.max_tokens,
        args.model,
        args.lookup,
        args.repeats,
        methods=args.methods,
        mtp_k=args.mtp_k,
        workloads=args.workloads,
    )
    print()
    print(format_table(rows))
    for note in (llama_cpp_note(), mtp_held_out_note(args.methods), rounding_note(rows)):
        if note:
            print(note)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    return 0 if all(r.matches_plain for r in rows if r.method != PEER and r.dtype == "float32") else 1


def main(argv: Sequence[str] | None = None, prog: str = "python -m decoding.lab.bench") -> int:
    return bench_from_args(parse_arguments(argv, prog, __doc__.splitlines()[0], add_bench_arguments))


if __name__ == "__main__":
    sys.exit(main())
