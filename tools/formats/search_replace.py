"""`search-replace`: Aider-style `<<<<<<< SEARCH` / `=======` / `>>>>>>> REPLACE` blocks, each with the fewest
context lines that make its SEARCH text unique where it is applied (`tools.formats.lines`)."""

from __future__ import annotations

from tools.formats.base import Format, Pairing, Perturbations, register
from tools.formats.lines import (
    apply_blocks,
    block_perturbations,
    minimal_blocks,
    parse_search_replace,
    render_search_replace,
)


def _perturb(output: str, seed: str, trials: int) -> Perturbations:
    """Trimmed whitespace and missing context (each at most once: neither depends on the seed)."""
    return block_perturbations(output, parse_search_replace, render_search_replace)


register(Format(
    name="search-replace",
    fence="search-replace",
    instruction=(
        "Reply with SEARCH/REPLACE blocks: a line `<<<<<<< SEARCH`, the exact lines to change with just enough "
        "context to be unique, a line `=======`, the new lines, a line `>>>>>>> REPLACE`."
    ),
    reference=lambda before, after: render_search_replace(minimal_blocks(before, after)),
    apply=lambda before, output, language: apply_blocks(before, parse_search_replace(output)),
    perturb=_perturb,
    role="alternative",
    baseline=Pairing("ngram", "an agent on vLLM's prompt lookup"),
    quick=True,
))
