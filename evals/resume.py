"""Editing evals, resuming: the reference-forced runs of an earlier JSON report, kept where they cover what is
asked, so a long decoding run that stopped decodes only the cases it had not reached."""

from __future__ import annotations

from pathlib import Path

from decoding.engine.loading import DEFAULT_WEIGHTS
from evals.schema import DrafterRun, read_report

# What computed each format's products in a report that did not record it (before int8 had Retain's kernel)
PRODUCTS_BEFORE_RECORDED = {"float32": "oneDNN", "float16": "fbgemm", "int8": "fbgemm, before Retain's kernel"}
# A report whose forwards were counted without the model (`--forwards-only`): no product ran, so none is compared
NO_PRODUCTS = "none: forwards counted without the model"


def decoded_before(
    path: Path, draft_tokens: int | None = None, weights: str = DEFAULT_WEIGHTS, products: str | None = None
) -> dict[str, dict[str, DrafterRun]]:
    """The reference-forced runs of an earlier report, by case id (cases never decoded left out); none when there
    is no report yet. Raises ValueError (`evals.schema.ReportError`) for a file that is not such a report, or one
    decoded with another draft length (`run_decode`'s `draft_tokens`), weight format, or kernel for its products
    (`products`, this machine's; None: not compared): its forwards or its times would not compare."""
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
    recorded = report.products or PRODUCTS_BEFORE_RECORDED.get(report.weights, "")
    if decoded and products is not None and recorded not in (products, NO_PRODUCTS):
        raise ValueError(f"{path} was decoded with {weights} products by {recorded}, and here they run on "
                         f"{products}: its times would not compare; resume it where it was decoded, or write a new "
                         "report")
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
