"""Editing evals, resuming: the reference-forced runs of an earlier JSON report, kept where they cover what is
asked, so a long decoding run that stopped decodes only the cases it had not reached."""

from __future__ import annotations

from pathlib import Path

from decoding.engine.loading import DEFAULT_WEIGHTS
from evals.schema import DrafterRun, read_report


def decoded_before(
    path: Path, draft_tokens: int | None = None, weights: str = DEFAULT_WEIGHTS
) -> dict[str, dict[str, DrafterRun]]:
    """The reference-forced runs of an earlier report, by case id (cases never decoded left out); none when there
    is no report yet. Raises ValueError (`evals.schema.ReportError`) for a file that is not such a report, or one
    decoded with another draft length (`run_decode`'s `draft_tokens`) or weight format: its forwards or its times
    would not compare."""
    if not path.exists():
        return {}
    report = read_report(path)
    decoded = {case.id: case.decode for case in report.cases if case.decode}
    if decoded and report.draft_tokens != draft_tokens:
        raise ValueError(f"{path} was decoded with {_spelled(report.draft_tokens)}, not {_spelled(draft_tokens)}: "
                         "resume it the same way, or write a new report")
    if decoded and report.weights != weights:
        raise ValueError(f"{path} was decoded with --weights {report.weights}, not {weights}: resume it the same "
                         "way, or write a new report")
    return decoded


def _spelled(draft_tokens: int | None) -> str:
    return "adaptive draft lengths" if draft_tokens is None else f"--draft-tokens {draft_tokens}"


def reusable(
    earlier: dict[str, DrafterRun] | None, formats: tuple[str, ...], drafters: tuple[str, ...]
) -> dict[str, DrafterRun] | None:
    """An earlier run's figures of one case cut down to `formats` and `drafters`, with their sums; None unless it
    has them all (then the case is decoded again)."""
    if earlier is None or any(drafter not in earlier or not set(formats) <= set(earlier[drafter].formats)
                              for drafter in drafters):
        return None
    return {drafter: DrafterRun.of({fmt: earlier[drafter].formats[fmt] for fmt in formats}) for drafter in drafters}
