"""The deciding measure of the edit formats: target forwards per applied edit (issue #15).

On a GPU the target's forwards are the latency of an edit, but an edit that does not apply is written again, so
what an edit costs in a format is its forwards ÷ the rate at which that format's output applies (the expected
forwards until one applies, tries being independent). Each format is taken with its own best drafter (the one
with the fewest target forwards over the edits it was decoded on), and OT is compared with each alternative
with its best drafter and with the pairs people use today: whole + cursor (Cursor-style speculative rewrite),
search-replace + ngram and udiff + ngram (an agent on vLLM's prompt lookup). Line OT (`ot-lines`, count-free
scripts of whole lines) is compared with the same alternatives, beside OT.

Forwards are reference-forced (`evals.decode`) on the decoded edits; apply rates are over every edit measured
(`evals.summary.summarize`): perturbed (the minimal output with the mistakes models make) as the model-like rate,
grounded (those of the mistakes grounded decoding still lets a model write, `decoding.engine.grounding`: the
model-like rate when every format is decoded grounded, as the server does) and clean (the minimal output itself)
beside them. Whole files have no perturbations; their clean rate stands for all three. A report measured before
the grounded basis has no grounded figures: unknown, so the perturbed rate stands in for them.
Model-free arithmetic on a report, so it is tested on synthetic reports.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from evals.schema import (
    CaseFigures,
    CostRatio,
    CostRow,
    CostSummary,
    ForcedRun,
    FormatSummary,
    PerApplied,
    RatioFigures,
)
from tools.formats import Format, formats, get_format

BASES = ("perturbed", "grounded", "clean")
EditCosts = dict[str, dict[str, float] | None]  # per basis ("forwards" and BASES): each edit's cost, or None
BEST, CHEAPEST = "its best drafter", "per edit, the alternative that costs least there (each with its best drafter)"


def _with_role(role: str) -> list[Format]:
    """The formats the cost compares in `role`: `subject` or `alternative` (`tools.formats.Format.role`)."""
    return [fmt for fmt in formats() if fmt.role == role]


def _runs(case: CaseFigures, drafter: str) -> dict[str, ForcedRun]:
    """One case's runs per format for one drafter (none where it was not decoded)."""
    run = case.decode.get(drafter)
    return run.formats if run else {}


def forwards(cases: list[CaseFigures], fmt: str, drafter: str) -> dict[str, int]:
    """Target forwards per edit id for one format and drafter, over the edits decoded that way."""
    return {case.id: runs[fmt].target_forwards for case in cases if fmt in (runs := _runs(case, drafter))}


def best_drafter(cases: list[CaseFigures], fmt: str, drafters: Sequence[str]) -> str | None:
    """The drafter with the fewest target forwards in total on `fmt` (the first of equals); None if undecoded."""
    totals = {drafter: sum(per_edit.values()) for drafter in drafters if (per_edit := forwards(cases, fmt, drafter))}
    return min(totals, key=totals.__getitem__) if totals else None


def apply_rates(formats_summary: dict[str, FormatSummary], fmt: str) -> dict[str, float]:
    """A format's apply rate per basis over every edit measured; a format without perturbations (whole) gets its
    clean rate as the perturbed one, and one without a grounded rate (whole; every format of a report measured
    before it was) its perturbed rate as the grounded one."""
    part = formats_summary[fmt]
    perturbed = part.applies if part.perturbed_applies is None else part.perturbed_applies
    grounded = perturbed if part.grounded_applies is None else part.grounded_applies
    return {"perturbed": perturbed, "grounded": grounded, "clean": part.applies}


def per_applied(value: float, rate: float) -> float | None:
    """Forwards per applied edit; None when the format never applies (no number of tries makes it)."""
    return value / rate if rate else None


def format_row(cases: list[CaseFigures], fmt: str, drafter: str, rates: dict[str, float]) -> CostRow:
    """One format with one drafter: totals of the decoded edits, and forwards per applied edit per basis (median
    and mean over the edits)."""
    runs = [per_format[fmt] for case in cases if fmt in (per_format := _runs(case, drafter))]
    tokens, target_forwards = sum(run.tokens for run in runs), sum(run.target_forwards for run in runs)
    median = statistics.median(run.target_forwards for run in runs)
    return CostRow(
        drafter=drafter,
        edits=len(runs),
        tokens=tokens,
        target_forwards=target_forwards,
        tokens_per_forward=tokens / target_forwards,
        seconds=round(sum(run.seconds for run in runs), 3),
        forwards_median=median,
        rates=rates,
        per_applied={basis: PerApplied(per_applied(median, rates[basis]),
                                       per_applied(target_forwards / len(runs), rates[basis])) for basis in BASES},
    )


def edit_costs(per_edit: dict[str, int], rates: dict[str, float]) -> EditCosts:
    """Each edit's cost per basis: its forwards alone (`forwards`), and its forwards per applied edit with the
    perturbed, the grounded and the clean apply rate (None for a basis on which the format never applies)."""
    return {"forwards": dict(per_edit)} | {
        basis: {edit: value / rates[basis] for edit, value in per_edit.items()} if rates[basis] else None
        for basis in BASES
    }


def cheapest(alternatives: list[EditCosts]) -> EditCosts:
    """Per basis and edit, the lowest cost among the alternatives decoded on that edit."""
    cheapest_costs: EditCosts = {}
    for basis in ("forwards", *BASES):
        known = [costs[basis] for costs in alternatives if costs[basis] is not None]
        edits = {edit for costs in known for edit in costs}
        cheapest_costs[basis] = {edit: min(c[edit] for c in known if edit in c) for edit in edits} if known else None
    return cheapest_costs


def ratio(subject: EditCosts, alternative: EditCosts, against: tuple[str, str | None, str]) -> CostRatio | None:
    """The subject's cost ÷ the alternative's (`against`: its format, drafter and why it is compared) per basis,
    over the edits both were decoded on: the median of the per-edit ratios and the ratio of the totals; `wins` and
    `wins_grounded`, the edits where the subject costs less per applied edit (perturbed; grounded). None without a
    common edit."""
    common = sorted(edit for edit in (subject["forwards"] or {}) if edit in (alternative["forwards"] or {}))
    if not common:
        return None
    figures: dict[str, RatioFigures] = {}
    wins: dict[str, int | None] = {"perturbed": None, "grounded": None}
    for basis in ("forwards", *BASES):
        ours, theirs = subject[basis], alternative[basis]
        if ours is None or theirs is None:
            figures[basis] = RatioFigures(None, None)
            continue
        per_edit = [ours[edit] / theirs[edit] for edit in common]
        figures[basis] = RatioFigures(statistics.median(per_edit),
                                      sum(ours[edit] for edit in common) / sum(theirs[edit] for edit in common))
        if basis in wins:
            wins[basis] = sum(value < 1 for value in per_edit)
    fmt, drafter, why = against
    return CostRatio(fmt, drafter, why, len(common), figures["forwards"], figures["perturbed"], figures["clean"],
                     figures["grounded"], wins["perturbed"], wins["grounded"])


def summarize_cost(
    cases: list[CaseFigures], formats_summary: dict[str, FormatSummary], drafters: Sequence[str]
) -> CostSummary:
    """Each format decoded and measured with its best drafter's row; OT against each alternative, then against the
    cheapest alternative on each edit; each other OT form the same way (no ratios for an OT form not decoded)."""
    rows = {}
    for fmt in formats_summary:
        pairing = get_format(fmt).baseline  # on a tie its drafter is the best, so the pair is compared once
        baseline = pairing.drafter if pairing else None
        drafter = best_drafter(cases, fmt, sorted(drafters, key=lambda drafter: drafter != baseline))
        if drafter is not None:
            rows[fmt] = format_row(cases, fmt, drafter, apply_rates(formats_summary, fmt))

    def costs(fmt: str, drafter: str) -> EditCosts:
        return edit_costs(forwards(cases, fmt, drafter), apply_rates(formats_summary, fmt))

    def ratios(subject_format: str) -> list[CostRatio]:
        found: list[CostRatio] = []
        if subject_format not in rows:
            return found
        subject = costs(subject_format, rows[subject_format].drafter)
        for fmt, drafter, why in comparisons(rows, drafters):
            if (figures := ratio(subject, costs(fmt, drafter), (fmt, drafter, why))) is not None:
                found.append(figures)
        best = [costs(fmt.name, rows[fmt.name].drafter) for fmt in _with_role("alternative") if fmt.name in rows]
        if len(best) > 1 and (figures := ratio(subject, cheapest(best), ("cheapest alternative", None, CHEAPEST))):
            found.append(figures)
        return found

    subject, *other_subjects = (fmt.name for fmt in _with_role("subject"))
    others = {fmt: found for fmt in other_subjects if (found := ratios(fmt))}
    return CostSummary(subject, rows, ratios(subject), others)


def comparisons(rows: dict[str, CostRow], drafters: Sequence[str]) -> list[tuple[str, str, str]]:
    """(format, drafter, why) to compare OT with: per alternative format, its baseline pair where that drafter was
    run, and the format with its best drafter where that is another one."""
    pairs = []
    for fmt in (fmt for fmt in _with_role("alternative") if fmt.name in rows):
        pairing, best = fmt.baseline, rows[fmt.name].drafter  # every alternative has a baseline pairing
        assert pairing is not None
        if pairing.drafter in drafters:
            why = pairing.who + ("; also its best drafter" if best == pairing.drafter else "")
            pairs.append((fmt.name, pairing.drafter, why))
        if best != pairing.drafter:
            pairs.append((fmt.name, best, BEST))
    return pairs
