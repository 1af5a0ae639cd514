"""The per-step `hybrid` drafter and `make_drafter`, which builds any drafter from its speculation method name.

The vocabulary (`Draft`, `DraftContext`, `ngram_lookup`, ...) lives in `decoding.drafting.base`; the edit-aware
`cursor` drafter in `decoding.drafting.cursor`, the multi-token-prediction head in `decoding.drafting.mtp`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, get_args

from decoding.drafting.base import Draft, DraftContext, Drafter, NgramDrafter
from decoding.drafting.cursor import CursorTokenDrafter
from decoding.drafting.mtp import MTPDrafter, MTPError, shared_head


@dataclass
class HybridDrafter:
    """Per step: the source-based draft whenever it has one; where it has nothing, the MTP head's draft or no draft,
    whichever has been paying better.

    The source-based drafter (the edit-aware cursor drafter given a tokenizer, else prompt lookup) proposes what it
    can copy: cheap, and on copy-heavy work long. The head is asked only where it finds nothing, so `hybrid` drafts
    what `cursor` does wherever that drafts anything (a head asked in front of a short lookup match displaced
    copies that would have been accepted: 46 forwards against cursor's 38 on ot-edit:bisect). Whether the head pays
    where nothing is copied depends on the machine (on a CPU in float32 every verified row costs output-layer time;
    in bfloat16 rows are nearly free), so that is measured: tokens per second of the steps each arm took ("mtp",
    or "plain": a step with no draft), from one proposal to the next, the better arm taken and the other retried at
    choices 4, 8, 16, ... (so a losing arm costs a few steps per generation, and a change of pace is noticed). The
    head sees every step's hidden rows either way (cached only when it drafts). Without a head (a target it was not
    trained for) it is the source-based drafter alone.
    """

    source: Drafter
    mtp: MTPDrafter | None = None
    name: str = "hybrid"
    rates: dict[str, float] = field(default_factory=dict)  # arm -> tokens/s of its steps (moving average)
    _choices: int = 0
    _previous: tuple[float, int, str | None] = (0.0, 0, None)  # (time, context length, arm) of the last proposal

    def propose(self, context: DraftContext, k: int) -> Draft:
        self._score(len(context.tokens))
        ready = self.mtp is not None and self.mtp.observe(context)
        copied = self.source.propose(context, k)
        arm = None if copied.tokens or not ready else self._choose()
        self._previous = (time.perf_counter(), len(context.tokens), arm)
        if arm == "mtp" and self.mtp is not None:
            return self.mtp.draft(context)
        return Draft(copied.tokens, source=copied.source or self.source.name, self_sized=copied.self_sized)

    def _score(self, length: int) -> None:
        """Credit the previous step's arm with the tokens it emitted per second (its draft and verify forward)."""
        then, then_length, arm = self._previous
        if arm is None:
            return
        rate = (length - then_length) / max(time.perf_counter() - then, 1e-6)
        self.rates[arm] = rate if arm not in self.rates else 0.75 * self.rates[arm] + 0.25 * rate

    def _choose(self) -> str:
        self._choices += 1
        for arm in ("mtp", "plain"):
            if arm not in self.rates:
                return arm
        best, other = sorted(("mtp", "plain"), key=lambda a: -self.rates[a])
        return other if self._choices & (self._choices - 1) == 0 else best  # retried at choices 4, 8, 16, ...


SpeculationMethod = Literal["off", "ngram", "cursor", "mtp", "hybrid", "auto"]
SPECULATION_METHODS: tuple[str, ...] = get_args(SpeculationMethod)


def make_drafter(
    method: SpeculationMethod | str, *, tokenizer=None, target=None, n_min: int = 2, n_max: int = 6
) -> Drafter | None:
    """The drafter for a speculation method; None for "off". "auto" is "hybrid".

    "cursor" follows edit scripts through the source and needs the tokenizer. "mtp" needs the `target` its head was
    trained for (else MTPError). "hybrid" copies with the cursor drafter (prompt lookup without a tokenizer) and,
    where that finds nothing, asks the MTP head while it pays (`HybridDrafter`); with no target, or a head that
    does not fit it, it is the copying drafter alone.
    """
    if method == "off":
        return None
    if method == "ngram":
        return NgramDrafter(n_min=n_min, n_max=n_max)
    if method == "cursor":
        if tokenizer is None:
            raise ValueError("the cursor drafter needs the tokenizer to read the edit script")
        return CursorTokenDrafter(tokenizer, n_min=n_min, n_max=n_max)
    if method == "mtp":
        if target is None:
            raise MTPError("the mtp drafter needs the target model")
        return MTPDrafter(shared_head(target))
    if method in ("hybrid", "auto"):
        copying = "cursor" if tokenizer else "ngram"
        source = make_drafter(copying, tokenizer=tokenizer, n_min=n_min, n_max=n_max)
        assert source is not None  # only "off" makes no drafter
        mtp = None
        if target is not None:
            try:
                mtp = MTPDrafter(shared_head(target))
            except MTPError:
                mtp = None
        return HybridDrafter(source=source, mtp=mtp)
    raise ValueError(f"unknown speculation method {method!r}; expected one of {', '.join(SPECULATION_METHODS)}")
