"""Prompt lookup and adaptive k: the drafting vocabulary every drafter and the vLLM plugins share."""

import pytest

from decoding.drafting.base import AdaptiveK, DraftContext, NgramDrafter, ngram_lookup
from decoding.drafting.drafters import make_drafter


def test_longest_suffix_match_wins_over_a_shorter_one():
    # Suffix [7, 8, 9]: the 2-gram [8, 9] occurs first (followed by 1), the 3-gram later (followed by 5).
    tokens = [8, 9, 1, 2, 7, 8, 9, 5, 6, 0, 7, 8, 9]
    assert ngram_lookup(tokens, k=2, n_min=2, n_max=3) == [5, 6]


def test_earliest_occurrence_wins_among_equal_lengths():
    tokens = [1, 2, 10, 11, 1, 2, 20, 21, 1, 2]
    assert ngram_lookup(tokens, k=2, n_min=2, n_max=2) == [10, 11]


def test_sources_are_searched_before_the_context():
    tokens = [1, 2, 10, 1, 2]
    assert ngram_lookup(tokens, sources=[[5, 1, 2, 30, 31]], k=3, n_min=2, n_max=2) == [30, 31]


def test_a_longer_match_in_the_context_beats_a_shorter_one_in_a_source():
    tokens = [3, 1, 2, 40, 41, 3, 1, 2]
    assert ngram_lookup(tokens, sources=[[1, 2, 30]], k=2, n_min=2, n_max=3) == [40, 41]


def test_no_match_and_the_suffix_itself_do_not_count():
    assert ngram_lookup([1, 2, 3, 4], k=4, n_min=2, n_max=3) == []
    # The only occurrence of [5, 5] with something after it starts at 0.
    assert ngram_lookup([5, 5, 5], k=4, n_min=2, n_max=2) == [5]


def test_k_limits_the_draft_and_large_ids_match_exactly():
    big = 262_143
    tokens = [big, 7, 1, 2, 3, 4, 5, 6, big, 7]
    assert ngram_lookup(tokens, k=3, n_min=2, n_max=4) == [1, 2, 3]
    # Byte-level matches that straddle token boundaries must not count: 0x0100 vs 0x01 followed by 0x00...
    assert ngram_lookup([256, 0, 1, 9, 1, 0], k=1, n_min=2, n_max=2) == []


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"n_min": 0}, {"n_min": 4, "n_max": 3}])
def test_bad_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError, match="need k > 0"):
        ngram_lookup([1, 2, 3], **kwargs)


def test_ngram_drafter_proposes_from_prediction():
    drafter = NgramDrafter(n_min=1, n_max=3)
    draft = drafter.propose(DraftContext(tokens=[9, 4], sources=[[4, 5, 6, 7]]), k=2)
    assert draft.tokens == [5, 6] and draft.probs is None


def test_adaptive_k_grows_on_full_accepts_and_shrinks_on_misses():
    adaptive = AdaptiveK(k_max=16, k=4)
    adaptive.update(drafted=4, accepted=4)
    assert adaptive.k == 8
    adaptive.update(drafted=8, accepted=8)
    adaptive.update(drafted=16, accepted=16)
    assert adaptive.k == 16
    adaptive.update(drafted=16, accepted=2)
    assert adaptive.k == 3
    adaptive.update(drafted=3, accepted=0)
    assert adaptive.k == 1
    adaptive.update(drafted=0, accepted=0)
    assert adaptive.k == 1


def test_make_drafter_names_the_unknown_method():
    assert make_drafter("off") is None
    assert make_drafter("ngram").name == "ngram"
    assert make_drafter("auto").name == "hybrid"
    with pytest.raises(ValueError, match="'magic'"):
        make_drafter("magic")
