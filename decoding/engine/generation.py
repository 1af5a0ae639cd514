"""Plain and speculative generation over a `Target`.

One loop does both: each step feeds the last sampled token plus k drafted tokens to the target in ONE forward
(k = 0 is plain decoding), scores only those k+1 rows, keeps the longest verified prefix plus the target's own next
token, and rolls the KV cache back over the rejected tail. The cache always holds every token but the last sampled
one ("pending"), which is fed at the start of the next step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from decoding.drafting.base import AdaptiveK, DraftContext, Drafter
from decoding.engine.grounding import EditGrounding
from decoding.engine.sampling import SamplingParams, accept_greedy, target_probs, verify_sampling
from decoding.engine.target import Target
from decoding.engine.threads import ThreadPolicy


@dataclass
class SpecStats:
    method: str
    drafted: int = 0
    accepted: int = 0
    target_forwards: int = 0  # including the prefill
    steps: int = 0  # decode forwards; each emits accepted + 1 tokens
    accepted_by: dict[str, int] = field(default_factory=dict)  # accepted draft tokens per drafter that proposed them
    drafted_at: list[int] = field(default_factory=list)  # drafts reaching position i (0-based), accepted or not
    accepted_at: list[int] = field(default_factory=list)  # drafts whose token at position i was accepted

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per decode forward (1.0 = plain decoding)."""
        return (self.accepted + self.steps) / self.steps if self.steps else 0.0

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "target_forwards": self.target_forwards,
            "mean_accepted_length": round(self.mean_accepted_length, 3),
            "accepted_by": dict(self.accepted_by),
        }

    def acceptance_at(self) -> list[float]:
        """Per draft position: accepted / reached (a position is reached when every earlier one was accepted)."""
        return [a / d if d else 0.0 for a, d in zip(self.accepted_at, self.drafted_at, strict=True)]


@dataclass
class GenerationRequest:
    prompt: list[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    drafter: Drafter | None = None
    sources: list[list[int]] = field(default_factory=list)  # extra text the drafter may copy from
    source_text: str | None = None  # sources[0] as text (the file being edited), for drafters that read text
    stop_ids: frozenset[int] = frozenset()
    k_max: int = 16
    k_start: int = 4
    k_min: int = 1  # k_min = k_start = k_max: a fixed draft length (as vLLM's ngram drafts, and a GPU affords)
    # Forced output (evals): drafts are verified against these tokens instead of the target's choice, while the
    # target still runs every verify forward, so forwards and time are those of a model that writes exactly this.
    reference: list[int] | None = None
    # Edit blocks the target may only write grounded in the file (`decoding.engine.grounding`); None = free.
    grounding: EditGrounding | None = None

    def __post_init__(self):
        if not self.prompt:
            raise ValueError("the prompt must contain at least one token")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.reference is not None and self.max_new_tokens > len(self.reference):
            raise ValueError(
                f"a reference-forced generation ends with its reference: max_new_tokens ({self.max_new_tokens}) "
                f"must not exceed its {len(self.reference)} tokens"
            )


class Generation:
    """Iterate to get token chunks as they are accepted; afterwards `tokens`, `finish_reason` and `stats` are set."""

    def __init__(self, target: Target, request: GenerationRequest):
        self.target = target
        self.request = request
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.stats = SpecStats(method=request.drafter.name if request.drafter else "off")
        self._fresh_hidden: list[torch.Tensor] = []  # target rows [n, D] not yet handed to the drafter
        self._generator = torch.Generator()
        if request.sampling.seed is not None:
            self._generator.manual_seed(request.sampling.seed)
        else:
            self._generator.seed()

    def __iter__(self) -> Iterator[list[int]]:
        req, target = self.request, self.target
        threads = ThreadPolicy()  # the cores other work leaves free, looked at again every few seconds
        threads.update()
        target.reset(len(req.prompt) + req.max_new_tokens + 1)
        hidden = target.forward(req.prompt)  # [T, D]
        self._keep_for_drafter(hidden)
        self.stats.target_forwards += 1
        _, pending = self._verify_rows([], None, hidden[-1:])
        chunk = self._emit([pending])
        if chunk:
            yield chunk
        adaptive = AdaptiveK(k_max=req.k_max, k=req.k_start, k_min=req.k_min)
        while self.finish_reason is None:
            threads.update()
            budget = req.max_new_tokens - len(self.tokens)
            draft, draft_probs, source, self_sized = self._draft(min(adaptive.k, budget - 1), budget - 1)
            base = target.length
            hidden = target.forward([pending, *draft])  # [k+1, D]
            accepted, pending = self._verify_rows(draft, draft_probs, hidden)
            target.rollback(base + 1 + accepted)
            self._keep_for_drafter(hidden[: accepted + 1])
            if not self_sized:
                adaptive.update(len(draft), accepted)
            self._count(len(draft), accepted, source)
            chunk = self._emit([*draft[:accepted], pending])
            if chunk:
                yield chunk

    def _keep_for_drafter(self, hidden: torch.Tensor) -> None:
        """Hidden rows [n, D] of newly cached positions, handed to the drafter with its next `DraftContext`."""
        if self.request.drafter is not None:
            self._fresh_hidden.append(hidden)

    def _draft(self, k: int, limit: int) -> tuple[list[int], torch.Tensor | None, str | None, bool]:
        """The next draft (at most `limit` tokens; `k` is the adaptive length asked for), its probabilities, the
        drafter that made it and whether that drafter sized it itself."""
        drafter = self.request.drafter
        if drafter is None or k <= 0:
            return [], None, None, False
        hidden = torch.cat(self._fresh_hidden) if len(self._fresh_hidden) > 1 else self._fresh_hidden[0]
        self._fresh_hidden = []
        context = DraftContext(
            tokens=self.request.prompt + self.tokens,
            sources=self.request.sources,
            source_text=self.request.source_text,
            hidden=hidden,
            limit=limit,
        )
        draft = drafter.propose(context, k)
        tokens = draft.tokens[: limit if draft.self_sized else k]
        probs = None if draft.probs is None else draft.probs[: len(tokens)]
        return tokens, probs, draft.source or drafter.name, draft.self_sized

    def _verify_rows(self, draft: list[int], draft_probs: torch.Tensor | None, hidden: torch.Tensor):
        """Verify from hidden rows [k+1, D], scoring them `target.logit_chunk` rows at a time under greedy.

        When output-layer cost grows with rows (float32 on CPU), rows after the first rejection are never scored.
        """
        grounding = self.request.grounding
        if grounding is not None and self.request.reference is None:
            return self._verify_grounded(grounding, draft, hidden)
        chunk = self.target.logit_chunk
        if not self._greedy or not chunk or chunk > len(draft):
            return self._verify(draft, draft_probs, hidden)
        start = 0
        while True:
            end = min(start + chunk, len(draft) + 1)
            accepted, token = self._verify_greedy(draft[start : end - 1], hidden[start:end], start)
            if end == len(draft) + 1 or start + accepted < end - 1 or token != draft[end - 1]:
                return start + accepted, token
            start = end  # the chunk's last row confirmed draft[end - 1]; the next row predicts draft[end]

    def _verify_grounded(self, grounding: EditGrounding, draft: list[int], hidden: torch.Tensor) -> tuple[int, int]:
        """Row by row, the token grounded plain decoding would take there; drafts are kept while they equal it.

        Plain decoding takes the target's choice among the allowed tokens (greedy: the best one; sampling: a draw
        from the distribution renormalized over them). Emitting that token at every row and going on only while
        it equals the draft gives exactly plain decoding's output, for any drafter.
        """
        best = greedy_tokens(self.target, hidden) if self._greedy else None

        def take(row: int) -> int:
            if best is not None:
                token = best[row]
                if not grounding.allows(token):
                    token = grounding.best_allowed(self.target.logits(hidden[row : row + 1])[0])
            else:
                probs = target_probs(self.target.logits(hidden[row : row + 1]), self.request.sampling)[0]
                token = grounding.sample(probs, self._generator)
            grounding.advance(token)
            return token

        for row, drafted in enumerate(draft):
            token = take(row)
            if token != drafted:
                return row, token
        return len(draft), take(len(draft))

    def _verify(self, draft: list[int], draft_probs: torch.Tensor | None, hidden: torch.Tensor) -> tuple[int, int]:
        """Verify `draft` from the hidden rows [k+1, D] that score it."""
        if self._greedy:
            return self._verify_greedy(draft, hidden)
        probs = target_probs(self.target.logits(hidden), self.request.sampling)
        return verify_sampling(draft, draft_probs, probs, self._generator)

    @property
    def _greedy(self) -> bool:
        return self.request.sampling.greedy or self.request.reference is not None

    def _verify_greedy(self, draft: list[int], hidden: torch.Tensor, offset: int = 0) -> tuple[int, int]:
        """`accept_greedy` on the target's argmax tokens of hidden rows [k+1, D]; under a reference (which the
        target's tokens are computed for all the same, as a model writing it would), the draft's agreeing prefix
        with it and the reference's next token.

        `offset`: where `draft` starts within the current draft (chunked verification).
        """
        best = greedy_tokens(self.target, hidden)
        reference = self.request.reference
        if reference is None:
            return accept_greedy(draft, best)
        at = len(self.tokens) + offset
        return accept_greedy(draft, reference[at : at + len(draft) + 1])

    def _count(self, drafted: int, accepted: int, source: str | None) -> None:
        stats = self.stats
        stats.drafted += drafted
        stats.accepted += accepted
        stats.target_forwards += 1
        stats.steps += 1
        if source is not None and drafted:
            stats.accepted_by[source] = stats.accepted_by.get(source, 0) + accepted
        for at in range(min(drafted, accepted + 1)):  # positions reached: all accepted ones and the first rejection
            if at == len(stats.drafted_at):
                stats.drafted_at.append(0)
                stats.accepted_at.append(0)
            stats.drafted_at[at] += 1
            stats.accepted_at[at] += at < accepted

    def _emit(self, new: list[int]) -> list[int]:
        """Append new tokens up to a stop token (excluded) or the length budget; set finish_reason when done."""
        out = []
        for token in new:
            if token in self.request.stop_ids:
                self.finish_reason = "stop"
                break
            out.append(token)
            if len(self.tokens) + len(out) >= self.request.max_new_tokens:
                self.finish_reason = "length"
                break
        self.tokens.extend(out)
        return out


def greedy_tokens(target: Target, hidden: torch.Tensor) -> list[int]:
    """Each hidden row's argmax token: the target's own `greedy` where it has one.

    Ours (`GreedyHead`) gives the float32 argmax at the cost of a float16 output layer.
    """
    greedy = getattr(target, "greedy", None)
    return greedy(hidden) if greedy is not None else target.logits(hidden).argmax(-1).tolist()


def generate(target: Target, prompt: Sequence[int], max_new_tokens: int, **options) -> Generation:
    """Run a generation to completion; options are `GenerationRequest` fields."""
    generation = Generation(target, GenerationRequest(prompt=list(prompt), max_new_tokens=max_new_tokens, **options))
    for _ in generation:
        pass
    return generation
