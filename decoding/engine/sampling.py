"""Turning logits into tokens, and lossless verification of drafted tokens.

Greedy: a draft token is kept while it equals the target's argmax. Sampling (Leviathan et al. 2023, Chen et al.
2023): keep draft x with probability min(1, p(x)/q(x)); on the first rejection sample from norm(max(0, p - q)); when
all k pass, sample one bonus token from p. Deterministic drafters have one-hot q. Temperature, top-k and top-p shape p
identically for plain and speculative decoding, so both sample from the same distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def target_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """logits [N, V] -> probabilities [N, V] after temperature, top-k and top-p (rows sum to 1)."""
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already reach top_p; the top token always stays.
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: Tensor, generator: torch.Generator | None) -> int:
    """One token from a probability row [V]."""
    return int(torch.multinomial(probs, 1, generator=generator))


def accept_greedy(draft: list[int], best: list[int]) -> tuple[int, int]:
    """best: the target's argmax token at the k+1 positions predicting draft[0..k-1] and the bonus.

    Returns (accepted, next_token): the agreeing prefix length and the target's own token after it.
    """
    accepted = 0
    while accepted < len(draft) and draft[accepted] == best[accepted]:
        accepted += 1
    return accepted, best[accepted]


def verify_sampling(
    draft: list[int], draft_probs: Tensor | None, probs: Tensor, generator: torch.Generator | None
) -> tuple[int, int]:
    """probs [k+1, V] from `target_probs`; draft_probs [k, V] or None for a deterministic (one-hot) drafter.

    Returns (accepted, next_token) with next_token from the residual on rejection or the bonus row when all pass.
    """
    k = len(draft)
    index = torch.arange(k)
    drafted = torch.tensor(draft, dtype=torch.long)
    p = probs[index, drafted]  # [k]
    q = torch.ones(k) if draft_probs is None else draft_probs[index, drafted]
    u = torch.rand(k, generator=generator)
    ok = (u * q < p).tolist()  # u < p/q without dividing by a zero q
    accepted = 0
    while accepted < k and ok[accepted]:
        accepted += 1
    if accepted == k:
        return k, sample(probs[k], generator)
    row = probs[accepted]
    if draft_probs is None:
        residual = row.clone()
        residual[draft[accepted]] = 0.0
    else:
        residual = (row - draft_probs[accepted]).clamp_min(0.0)
    total = residual.sum()
    # A zero residual means p == q on the support; any sample from p is then exact.
    return accepted, sample(residual / total if total > 0 else row, generator)
