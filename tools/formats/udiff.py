"""`udiff`: unified-diff hunks without line numbers (`@@ ... @@`, as Aider asks models to write them), with the
same minimal context as search/replace (`tools.formats.lines`)."""

from __future__ import annotations

from tools.formats.base import Format, Pairing, Perturbations, register
from tools.formats.lines import apply_blocks, block_perturbations, minimal_blocks, parse_udiff, render_udiff


def _perturb(output: str, seed: str, trials: int) -> Perturbations:
    """Trimmed whitespace and missing context (each at most once: neither depends on the seed)."""
    return block_perturbations(output, parse_udiff, render_udiff)


register(Format(
    name="udiff",
    fence="diff",
    instruction=(
        "Reply with a unified diff without line numbers: each hunk starts with `@@ ... @@`, then context lines "
        "start with a space, removed lines with `-`, added lines with `+`."
    ),
    reference=lambda before, after: render_udiff(minimal_blocks(before, after)),
    apply=lambda before, output, language: apply_blocks(before, parse_udiff(output)),
    perturb=_perturb,
    role="alternative",
    baseline=Pairing("ngram", "an agent on vLLM's prompt lookup"),
    quick=True,
))
