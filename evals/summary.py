"""Editing evals, summarising: per format over every case measured (tokens, tokens saved, apply rates of the
minimal output and of its perturbations, grounded or not), and per format and drafter over the cases decoded."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict

from evals.schema import CaseFigures, FormatSummary, Perturbation
from tools.formats import get_format


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100), interpolating between the nearest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(results: list[CaseFigures], formats: tuple[str, ...]) -> dict[str, FormatSummary]:
    """Per format: tokens (median, p90), tokens saved vs the whole file (median, p90, median %), apply rates."""
    return {fmt: summarize_format(results, fmt, "whole" in formats) for fmt in formats}


def summarize_format(results: list[CaseFigures], fmt: str, with_whole: bool) -> FormatSummary:
    tokens = [r.formats[fmt].tokens for r in results]
    part = FormatSummary(
        cases=len(results),
        tokens_median=statistics.median(tokens),
        tokens_p90=percentile(tokens, 90),
        applies=sum(r.formats[fmt].applies for r in results) / len(results),
    )
    if with_whole:
        whole = [r.formats["whole"].tokens for r in results]
        saved = [w - t for w, t in zip(whole, tokens, strict=True)]
        saved_share = [s / w for s, w in zip(saved, whole, strict=True) if w]
        part.saved_median, part.saved_p90 = statistics.median(saved), percentile(saved, 90)
        part.saved_share_median = statistics.median(saved_share) if saved_share else None
    if get_format(fmt).perturb is not None:
        trials = [p for r in results for p in r.formats[fmt].perturbed or ()]
        part.perturbed_trials = len(trials)
        part.perturbed_applies, part.perturbed_wrong = _share(trials, "exact"), _share(trials, "wrong")
        part.perturbed_by_kind = _by_kind(trials)
        if grounding_known(trials):
            part.grounded_trials, part.grounded_applies = grounded_figures(trials, part.applies)
    return part


def _by_kind(trials: list[Perturbation]) -> dict[str, dict]:
    """Per perturbation kind: trials, the share that apply, that apply wrongly and (where measured) that grounding
    allows."""
    by_kind: dict[str, Counter] = {}
    grounded: Counter = Counter()
    for trial in trials:
        by_kind.setdefault(trial.kind, Counter())[trial.outcome] += 1
        grounded[trial.kind] += bool(trial.grounded)
    known = grounding_known(trials)
    figures = {}
    for kind, outcomes in sorted(by_kind.items()):
        n = sum(outcomes.values())
        figures[kind] = {"trials": n, "applies": outcomes["exact"] / n, "wrong": outcomes["wrong"] / n}
        if known:
            figures[kind]["grounded"] = grounded[kind] / n
    return figures


def grounded_figures(trials: list[Perturbation], clean: float) -> tuple[int, float | None]:
    """`grounded_trials`, the perturbations grounded decoding would let a model write, and `grounded_applies`, the
    share of them that apply: the apply rate of a grounded model's mistakes. Where grounding refuses every one (or
    there is none) it is the clean rate `clean`: a grounded model cannot make those mistakes."""
    allowed = [trial for trial in trials if trial.grounded]
    return len(allowed), _share(allowed, "exact") if allowed else clean


def grounding_known(trials: list[Perturbation]) -> bool:
    """Whether the trials say whether grounding allows them (a report written before it was measured does not)."""
    return all(trial.grounded is not None for trial in trials)


def _share(trials: list[Perturbation], outcome: str) -> float | None:
    return sum(t.outcome == outcome for t in trials) / len(trials) if trials else None


def summarize_forced(results: list[CaseFigures], formats: Sequence[str], drafters: Sequence[str]) -> dict:
    """`{format: {drafter: totals and ratios to off}}` over the cases decoded in that format (whole files may be
    decoded on fewer)."""
    from evals.decode import compare

    decoded = [r.decode for r in results if r.decode]
    summary = {}
    for fmt in formats:
        runs = [case for case in decoded if fmt in case[drafters[0]].formats]
        if runs:
            summary[fmt] = compare({drafter: [asdict(case[drafter].formats[fmt]) for case in runs]
                                    for drafter in drafters})
    return summary
