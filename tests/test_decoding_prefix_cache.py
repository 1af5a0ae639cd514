import pytest
import torch

from decoding.drafting.base import NgramDrafter
from decoding.engine.generation import generate
from decoding.engine.prefix_cache import PrefixCachingTarget, common_prefix
from decoding.engine.target import GemmaTarget


def tokens(seed: int, n: int) -> list[int]:
    return torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


SHARED = tokens(1, 40)
A, B, C = SHARED + tokens(2, 12), SHARED + tokens(3, 9), tokens(4, 30)


def uncached(model, prompt: list[int], **options) -> list[int]:
    return generate(GemmaTarget(model), prompt, 12, **options).tokens


@pytest.mark.parametrize(("a", "b"), [([], [1]), ([1, 2, 3], [1, 2, 3]), ([1, 2, 3], [1, 2, 4, 5]), ([5] * 9, [5] * 7)])
def test_common_prefix(a, b):
    expected = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    assert common_prefix(a, b) == common_prefix(b, a) == expected


@pytest.mark.parametrize("drafter", [None, NgramDrafter], ids=["plain", "ngram"])
def test_cached_prefixes_give_the_uncached_output(tiny_gemma, drafter):
    """Live reuse (B after A), a snapshot (A after B overwrote it), nothing shared (C), the same prompt again."""
    cached = PrefixCachingTarget(GemmaTarget(tiny_gemma))
    expected_reuse = {0: 0, 1: len(SHARED), 2: len(A) - 1, 3: 0, 4: len(C) - 1}
    for i, prompt in enumerate([A, B, A, C, C]):
        options = {"drafter": drafter(n_min=1) if drafter else None}
        got = generate(cached, prompt, 12, **options)
        assert cached.reused == expected_reuse[i], i
        assert got.tokens == uncached(tiny_gemma, prompt, **options), i


@pytest.mark.parametrize(("prompt", "reused"), [(B, len(SHARED) + 2), (A, len(A) - 1)], ids=["live", "snapshot"])
def test_the_first_forward_returns_every_prompt_row_as_uncached(tiny_gemma, prompt, reused):
    """The engine hands the prompt's hidden rows to the drafter (the MTP head reads them); the last row is computed
    over the cached keys and values."""
    cached = PrefixCachingTarget(GemmaTarget(tiny_gemma))
    generate(cached, A, 4)
    generate(cached, B, 4)  # A is a snapshot now, B + its output the live cache
    cached.reset(len(prompt) + 5)
    cached.rollback(len(SHARED) + 2)  # B's prefix past SHARED is live, so a prompt A draws on both kinds
    fresh = GemmaTarget(tiny_gemma)
    fresh.reset(len(prompt) + 5)
    # the cached rows attend over fewer rows at once than the fresh prompt's: their sums round differently, and int8's
    # 16-bit inputs can land one level apart (about 1e-4 here)
    torch.testing.assert_close(cached.forward(prompt), fresh.forward(prompt), atol=1e-3, rtol=1e-3)
    assert cached.reused == reused


def test_a_bigger_request_grows_the_cache_and_keeps_the_prefix(tiny_gemma):
    cached = PrefixCachingTarget(GemmaTarget(tiny_gemma))
    first = generate(cached, A, 2).tokens
    longer = A + first + tokens(5, 200)
    assert generate(cached, longer, 12).tokens == uncached(tiny_gemma, longer)
    assert cached.reused == len(A) + 1  # the prompt and the first output token (the second was never fed)


def test_snapshots_are_least_recently_used_and_bounded(tiny_gemma):
    cached = PrefixCachingTarget(GemmaTarget(tiny_gemma), max_entries=2)
    d = tokens(6, 30)
    for prompt in (A, C, d, tokens(7, 30)):  # A's snapshot is the oldest of three: evicted
        generate(cached, prompt, 2)
    assert len(cached.snapshots) == 2
    generate(cached, A, 2)
    assert cached.reused == 0
    generate(cached, d, 2)  # still cached
    assert cached.reused == len(d) - 1
    tight = PrefixCachingTarget(GemmaTarget(tiny_gemma), max_bytes=1000)
    generate(tight, A, 2)
    generate(tight, C, 2)
    assert tight.snapshots == []  # one snapshot of A would exceed the bound
    generate(tight, A, 2)
    assert tight.reused == 0
