"""The drafting vocabulary every drafter and engine shares: drafts, their context, the interface, prompt lookup.

Every drafter has `propose(context, k) -> Draft`. The n-gram lookup itself is a pure function over token id lists
(`ngram_lookup`) so other engines (the vLLM plugins) can share it. This module imports no drafter.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor


@dataclass
class Draft:
    tokens: list[int]
    probs: Tensor | None = None  # [k, V] draft distribution; None = deterministic (one-hot on tokens)
    source: str | None = None  # which drafter produced it, when a drafter combines several
    # True when the drafter chose the length itself (the MTP head): the engine's adaptive k then learns nothing from it
    self_sized: bool = False


@dataclass
class DraftContext:
    tokens: list[int]  # everything the target has seen or will see next: prompt + output so far
    sources: list[list[int]] = field(default_factory=list)  # extra text to copy from, e.g. the prediction content
    source_text: str | None = None  # sources[0] as text, when the caller has it (saves drafters decoding it)
    # The target's final hidden states [n, D] of the positions it cached since the previous proposal, in order; the
    # last row is the one whose logits produced tokens[-1]. None when the engine does not provide them.
    hidden: Tensor | None = None
    limit: int | None = None  # the most draft tokens still useful (the length budget); None = no limit


class Drafter(Protocol):
    @property
    def name(self) -> str: ...

    def propose(self, context: DraftContext, k: int) -> Draft: ...


def _as_bytes(tokens: Sequence[int]) -> bytes:
    return array("I", tokens).tobytes()


def _find_aligned(haystack: bytes, needle: bytes, limit: int) -> int:
    """Earliest token-aligned index of `needle` in `haystack` starting before token `limit`, or -1."""
    pos = haystack.find(needle)
    while pos != -1 and pos < 4 * limit:
        if pos % 4 == 0:
            return pos // 4
        pos = haystack.find(needle, pos + 1)
    return -1


def ngram_lookup(
    tokens: Sequence[int], sources: Sequence[Sequence[int]] = (), k: int = 8, n_min: int = 2, n_max: int = 6
) -> list[int]:
    """Prompt lookup: the up-to-`k` tokens that followed the longest earlier occurrence of the context's suffix.

    For n from n_max down to n_min, look for the last n tokens of `tokens` first in each of `sources` (in order) and
    then earlier in `tokens` itself; the earliest occurrence wins, as in vLLM's n-gram proposer. Returns [] when
    nothing matches.
    """
    if k <= 0 or n_min < 1 or n_max < n_min:
        raise ValueError(f"need k > 0 and 1 <= n_min <= n_max, got k={k}, n_min={n_min}, n_max={n_max}")
    haystacks = [(_as_bytes(s), s, len(s)) for s in sources if s]
    own = _as_bytes(tokens)
    for n in range(min(n_max, len(tokens) - 1), n_min - 1, -1):
        needle = own[-4 * n :]
        for raw, seq, size in haystacks:
            at = _find_aligned(raw, needle, size - n)
            if at != -1:
                return list(seq[at + n : at + n + k])
        # In the context itself the match must end before the suffix does, so something follows it.
        at = _find_aligned(own, needle, len(tokens) - n)
        if at != -1:
            return list(tokens[at + n : at + n + k])
    return []


@dataclass
class NgramDrafter:
    n_min: int = 2
    n_max: int = 6
    name: str = "ngram"

    def propose(self, context: DraftContext, k: int) -> Draft:
        return Draft(ngram_lookup(context.tokens, context.sources, k=k, n_min=self.n_min, n_max=self.n_max))


@dataclass
class AdaptiveK:
    """Draft length from recent acceptance: double after a fully accepted draft, shrink to what was accepted + 1.

    A drafter that keeps missing on free text thus drafts a single token, which costs little in a batched verify.
    """

    k_max: int = 16
    k_min: int = 1
    k: int = 4

    def __post_init__(self):
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}")
        self.k = min(max(self.k, self.k_min), self.k_max)

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        self.k = min(self.k_max, self.k * 2) if accepted == drafted else max(self.k_min, accepted + 1)
