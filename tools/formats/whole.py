"""`whole`: the file after the edit, written out in full (as Cursor-style speculative rewrites do)."""

from __future__ import annotations

from tools.formats.base import Format, Pairing, register


def _apply(before: str, output: str, language: str | None) -> str:
    """The output is the file: nothing to place, so nothing to refuse."""
    return output


register(Format(
    name="whole",
    fence="overwrite",
    instruction="Reply with the whole file after the change, and nothing else.",
    reference=lambda before, after: after,
    apply=_apply,
    role="alternative",
    baseline=Pairing("cursor", "Cursor-style speculative rewrite"),
    quick=True,
))
