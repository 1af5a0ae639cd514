"""Editing evals, decoding: per drafter, the embedded model's target forwards and decode time, reference-forced
on each case decoded and free-running on the standard workloads (`evals.decode`), added to a report with their
summaries and the cost per applied edit (`evals.cost`)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from decoding.engine.loading import DEFAULT_WEIGHTS
from evals.progress import Progress
from evals.schema import DecodeSummary, DrafterRun, ForcedRun, FormatFigures, Perturbation, Report
from evals.summary import grounding_known, summarize_forced


def run_decode(
    report: Report, cases: list[dict], loaded, decode_formats: tuple[str, ...], drafters: tuple[str, ...],
    max_tokens: int, workloads: int | None = None, progress: bool = True,
    done: dict[str, dict[str, DrafterRun]] | None = None, checkpoint: Callable[[], None] = lambda: None,
    whole_ids: set[str] | None = None, model_free: bool = False, draft_tokens: int | None = None,
    weights: str = DEFAULT_WEIGHTS,
) -> None:
    """Add the decoding evals to `report`: reference-forced per case (`decode` of the decoded cases; the others
    keep an empty one), free-running on the standard workloads (only the `workloads` copy-heavy ones with the
    shortest prompts when given; none when `max_tokens` is 0), their summaries and the cost per applied edit.
    `whole` is decoded only on the cases in `whole_ids` (all when None): it costs a forward per token of the file.
    `model_free`: only count the forwards, without the model (`Decoder.model_free`; `loaded` is not used).
    `draft_tokens`: every drafter drafts this many tokens at every step (None: the engine's adaptive length); the
    report records it, and `evals.resume` keeps figures only from a report decoded the same way; so with `weights`,
    the model's weight format (`decoding.engine.weights`).
    Cases whose runs in `done` (id → an earlier run's, `evals.resume`) cover their formats and every drafter keep
    those figures; `checkpoint()` runs after each case decoded."""
    from decoding.lab.workloads import standard_workloads
    from evals.cost import summarize_cost
    from evals.decode import Decoder, decode_case, free_running, summarize_free
    from evals.resume import NO_PRODUCTS, reusable

    decoder = Decoder.model_free() if model_free else Decoder(loaded, weights)
    decoder.draft_tokens = report.draft_tokens = draft_tokens
    report.weights = weights
    if model_free:
        report.products = NO_PRODUCTS
    else:
        from decoding.engine.weights import products

        report.products = products(weights)
    by_id = {case.id: case for case in report.cases}
    chosen = standard_workloads() if workloads is None else copy_heavy(standard_workloads())[:workloads]
    chosen = chosen if max_tokens else []
    plans = []
    for case in cases:
        formats = case_formats(decode_formats, whole_ids is None or case["id"] in whole_ids)
        plans.append((case, formats, reusable((done or {}).get(case["id"]), formats, drafters)))
    if done is not None and progress:
        kept = sum(earlier is not None for _, _, earlier in plans)
        print(f"resuming: {kept} of {len(cases)} cases decoded already", file=sys.stderr)
    units = sum(len(formats) for _, formats, earlier in plans if earlier is None) * len(drafters)
    bar = Progress(units + len(chosen) * len(drafters), "decoding", progress)
    for case, formats, earlier in plans:
        runs = earlier or drafter_runs(decode_case(decoder, case, formats, drafters, bar.step))
        by_id[case["id"]].decode = with_applies(runs, by_id[case["id"]].formats)
        if earlier is None:
            checkpoint()
    free = free_running(decoder, drafters, max_tokens, chosen, bar.step)
    bar.close()
    report.free_running = free
    report.summary.decode = DecodeSummary(
        cases=len(cases),
        formats=list(decode_formats),
        drafters=list(drafters),
        whole_cases=len(cases) if whole_ids is None else len(whole_ids),
        reference_forced=summarize_forced(report.cases, decode_formats, drafters),
        free_running=summarize_free(free),
        max_tokens=max_tokens,
    )
    report.summary.cost = summarize_cost(report.cases, report.summary.formats, drafters)


def case_formats(decode_formats: tuple[str, ...], whole: bool) -> tuple[str, ...]:
    """The formats one case is decoded in: `whole` only where asked, being the long one."""
    return decode_formats if whole else tuple(fmt for fmt in decode_formats if fmt != "whole")


def drafter_runs(figures: dict[str, dict]) -> dict[str, DrafterRun]:
    """`evals.decode.decode_case`'s figures of one case, per drafter, as runs of the report."""
    return {drafter: DrafterRun.of({fmt: ForcedRun(**run) for fmt, run in per_drafter["formats"].items()})
            for drafter, per_drafter in figures.items()}


def with_applies(decode: dict[str, DrafterRun], formats: dict[str, FormatFigures]) -> dict[str, DrafterRun]:
    """A case's runs with, per drafter and format, whether that format's output applies on this case: `applies`
    (the minimal output), `applies_perturbed` (the share of its perturbations that apply; None for a format without
    any) and `applies_grounded` (the share of those grounded decoding allows that apply, the clean outcome where it
    allows none; None for a format without perturbations), so each row of the JSON holds every figure of the cost
    per applied edit."""
    for per_drafter in decode.values():
        for fmt, run in per_drafter.formats.items():
            measured = formats.get(fmt)
            trials = measured.perturbed if measured else None
            run.applies = measured.applies if measured else None
            run.applies_perturbed = sum(t.applies for t in trials) / len(trials) if trials else None
            run.applies_grounded = _grounded_share(trials, run.applies)
    return decode


def _grounded_share(trials: list[Perturbation] | None, applies: bool | None) -> float | None:
    """One case's share of the perturbations grounding allows that apply; whether its minimal output applies where
    grounding allows none; None without perturbations, or where grounding was not measured."""
    if not trials or not grounding_known(trials):
        return None
    allowed = [trial for trial in trials if trial.grounded]
    return sum(trial.applies for trial in allowed) / len(allowed) if allowed else float(bool(applies))


def copy_heavy(workloads: list) -> list:
    """The workloads with source text to copy from, shortest prompt first."""
    return sorted((w for w in workloads if w.prediction), key=lambda w: len(w.prompt))
