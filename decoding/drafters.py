"""Drafters: cheap guesses of the next tokens that the target model then verifies in one forward.

Every drafter has `propose(context, k) -> Draft`. The n-gram lookup itself is a pure function over token id lists
(`ngram_lookup`) so other engines can share it. The edit-aware `cursor` drafter lives in `decoding.cursor`, the
multi-token-prediction head in `decoding.mtp`; the per-step `hybrid` drafter here combines them.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from torch import Tensor

if TYPE_CHECKING:
    from decoding.mtp import MTPDrafter


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
    # The target's final hidden states [n, D] of the positions it cached since the previous proposal, in order; the
    # last row is the one whose logits produced tokens[-1]. None when the engine does not provide them.
    hidden: Tensor | None = None
    limit: int | None = None  # the most draft tokens still useful (the length budget); None = no limit


class Drafter(Protocol):
    name: str

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


@dataclass
class HybridDrafter:
    """Per step: the source-based draft when it is trusted, else the MTP head's draft or a short lookup, whichever
    has been paying better.

    The source-based drafter (the edit-aware cursor drafter given a tokenizer, else prompt lookup) only takes
    prompt-lookup matches of at least 3 tokens; what it proposes is copied (long drafts, cheap). Otherwise
    the step is a choice between two arms: the MTP head's guess, and `fallback` (the same lookup down to 2-token
    matches, often nothing). Whether the head pays depends on the machine (on a CPU in float32 every verified row
    costs output-layer time; in bfloat16 rows are nearly free), so the choice is measured: tokens per second of
    the steps each arm drafted, from one proposal to the next, the better arm taken and the other retried at
    choices 4, 8, 16, ... (so a losing arm costs a few steps per generation, and a change of pace is noticed).
    The head sees every step's hidden rows either way (cached only when it drafts). Without a head (a target it
    was not trained for) it is the source-based drafters alone.
    """

    source: Drafter
    mtp: MTPDrafter | None = None
    fallback: Drafter | None = None
    name: str = "hybrid"
    rates: dict[str, float] = field(default_factory=dict)  # arm -> tokens/s of its steps (moving average)
    _choices: int = 0
    _previous: tuple[float, int, str | None] = (0.0, 0, None)  # (time, context length, arm) of the last proposal

    def propose(self, context: DraftContext, k: int) -> Draft:
        self._score(len(context.tokens))
        ready = self.mtp is not None and self.mtp.observe(context)
        copied = self.source.propose(context, k)
        arm = None if copied.tokens else self._choose() if ready else "lookup"
        self._previous = (time.perf_counter(), len(context.tokens), arm if ready else None)
        if arm == "mtp":
            return self.mtp.draft(context)
        if arm == "lookup" and self.fallback is not None:
            copied = self.fallback.propose(context, k)
        return Draft(copied.tokens, source=copied.source or self.source.name)

    def _score(self, length: int) -> None:
        """Credit the previous step's arm with the tokens it emitted per second (its draft and verify forward)."""
        then, then_length, arm = self._previous
        if arm is None:
            return
        rate = (length - then_length) / max(time.perf_counter() - then, 1e-6)
        self.rates[arm] = rate if arm not in self.rates else 0.75 * self.rates[arm] + 0.25 * rate

    def _choose(self) -> str:
        self._choices += 1
        for arm in ("mtp", "lookup"):
            if arm not in self.rates:
                return arm
        best, other = sorted(("mtp", "lookup"), key=lambda a: -self.rates[a])
        return other if self._choices & (self._choices - 1) == 0 else best  # retried at choices 4, 8, 16, ...


SPECULATION_METHODS = ("off", "ngram", "cursor", "mtp", "hybrid", "auto")
TRUSTED_MATCH = 3  # prompt-lookup match length (tokens) that hybrid copies rather than asking the MTP head


def make_drafter(method: str, *, tokenizer=None, target=None, n_min: int = 2, n_max: int = 6) -> Drafter | None:
    """The drafter for a speculation method; None for "off". "auto" is "hybrid".

    "cursor" follows edit scripts through the source and needs the tokenizer. "mtp" needs the `target` its head was
    trained for (else MTPError). "hybrid" copies with the cursor drafter (prompt lookup without a tokenizer) and
    otherwise asks the MTP head or a short lookup, whichever pays (`HybridDrafter`); with no target, or a head that
    does not fit it, it is the copying drafters alone.
    """
    if method == "off":
        return None
    if method == "ngram":
        return NgramDrafter(n_min=n_min, n_max=n_max)
    if method == "cursor":
        if tokenizer is None:
            raise ValueError("the cursor drafter needs the tokenizer to read the edit script")
        from decoding.cursor import CursorTokenDrafter  # cursor builds on this module

        return CursorTokenDrafter(tokenizer, n_min=n_min, n_max=n_max)
    if method == "mtp":
        from decoding.mtp import MTPDrafter, MTPError, shared_head  # mtp builds on this module

        if target is None:
            raise MTPError("the mtp drafter needs the target model")
        return MTPDrafter(shared_head(target))
    if method in ("hybrid", "auto"):
        from decoding.mtp import MTPDrafter, MTPError, shared_head

        trusted = max(n_min, TRUSTED_MATCH)
        copying = "cursor" if tokenizer else "ngram"
        source = make_drafter(copying, tokenizer=tokenizer, n_min=trusted, n_max=n_max)
        fallback = NgramDrafter(n_min=n_min, n_max=trusted - 1) if n_min < trusted else None
        mtp = None
        if target is not None:
            try:
                mtp = MTPDrafter(shared_head(target))
            except MTPError:
                mtp = None
        return HybridDrafter(source=source, mtp=mtp, fallback=fallback)
    raise ValueError(f"unknown speculation method {method!r}; expected one of {', '.join(SPECULATION_METHODS)}")
