"""Lossless verification: greedy keeps the agreeing prefix, rejection sampling keeps the target's distribution."""

import pytest
import torch

from decoding.engine.sampling import SamplingParams, accept_greedy, target_probs, verify_sampling

# Chi-square critical value for 5 degrees of freedom at p = 0.001: a correct sampler fails 1 run in 1000,
# and with fixed seeds these tests are deterministic.
CHI2_CRIT_DF5 = 20.515
N = 20_000


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def first_token_counts(p: torch.Tensor, q: torch.Tensor | None, fixed: int | None, seed: int) -> torch.Tensor:
    """Emit the first token of many speculative steps with a k=2 draft and count it."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(p.shape[-1])
    for _ in range(N):
        if q is None:
            draft, draft_probs = [fixed, fixed], None
        else:
            draft = torch.multinomial(q, 1, replacement=True, generator=gen).squeeze(-1).tolist()
            draft_probs = q
        accepted, token = verify_sampling(draft, draft_probs, p, gen)
        counts[draft[0] if accepted > 0 else token] += 1
    return counts


P = torch.tensor(
    [
        [0.40, 0.25, 0.15, 0.10, 0.06, 0.04],
        [0.05, 0.05, 0.30, 0.30, 0.20, 0.10],
        [0.10, 0.10, 0.10, 0.20, 0.20, 0.30],
    ]
)


def test_rejection_sampling_with_a_stochastic_draft_matches_the_target():
    q = torch.tensor([[0.05, 0.05, 0.10, 0.20, 0.30, 0.30], [0.3, 0.3, 0.1, 0.1, 0.1, 0.1]])
    counts = first_token_counts(P, q, None, seed=1)
    assert chi_square(counts, P[0]) < CHI2_CRIT_DF5


@pytest.mark.parametrize("fixed", [0, 5])
def test_rejection_sampling_with_a_deterministic_draft_matches_the_target(fixed):
    counts = first_token_counts(P, None, fixed, seed=2 + fixed)
    assert chi_square(counts, P[0]) < CHI2_CRIT_DF5


def test_a_sampler_that_ignores_the_residual_is_caught():
    # Sanity check of the test itself: drawing from p after a rejection (instead of norm(max(0, p - q)))
    # over-produces the drafted token, and the chi-square statistic sees it.
    gen = torch.Generator().manual_seed(3)
    counts = torch.zeros(6)
    for _ in range(N):
        accepted = bool(torch.rand(1, generator=gen) < P[0, 5])
        counts[5 if accepted else int(torch.multinomial(P[0], 1, generator=gen))] += 1
    assert chi_square(counts, P[0]) > CHI2_CRIT_DF5


def test_bonus_token_comes_from_the_last_row_when_all_drafts_pass():
    gen = torch.Generator().manual_seed(4)
    q = P[:2].clone()  # q == p: every draft passes
    counts = torch.zeros(6)
    for _ in range(N // 4):
        draft = torch.multinomial(q, 1, generator=gen).squeeze(-1).tolist()
        accepted, token = verify_sampling(draft, q, P, gen)
        assert accepted == 2
        counts[token] += 1
    assert chi_square(counts, P[2]) < CHI2_CRIT_DF5


def test_greedy_verification_keeps_the_agreeing_prefix_and_the_targets_next_token():
    best = torch.log(P).argmax(-1).tolist()  # 0, 2 (first of the tied 2/3), 5
    assert accept_greedy([0, 2], best) == (2, 5)
    assert accept_greedy([0, 3], best) == (1, 2)
    assert accept_greedy([1, 2], best) == (0, 0)
    assert accept_greedy([], best[:1]) == (0, 0)


def test_top_k_and_top_p_shape_the_target_distribution():
    logits = torch.log(P[:1])
    top2 = target_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert torch.allclose(top2, torch.tensor([[0.40, 0.25, 0, 0, 0, 0]]) / 0.65)
    nucleus = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert torch.allclose(nucleus, torch.tensor([[0.40, 0.25, 0.15, 0, 0, 0]]) / 0.80)
    assert torch.allclose(target_probs(logits, SamplingParams(temperature=1.0)), P[:1])
    sharp = target_probs(logits, SamplingParams(temperature=0.5))
    assert sharp[0, 0] > P[0, 0]


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2}])
def test_bad_sampling_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)
