"""The vLLM `custom_class` proposer: Retain's lookup over each request's tokens, without vLLM installed."""

from types import SimpleNamespace

import numpy as np

from decoding.drafting.base import ngram_lookup
from decoding.vllm.proposer import LookupProposer


def _config(k: int, max_model_len: int = 64):
    return SimpleNamespace(
        speculative_config=SimpleNamespace(num_speculative_tokens=k),
        model_config=SimpleNamespace(max_model_len=max_model_len),
    )


def test_each_request_gets_the_lookup_of_its_own_tokens():
    copy = [5, 6, 7, 8, 9, 10, 11, 5, 6, 7]  # "5 6 7" recurs: 8 9 10 11 follow it
    free = [1, 2, 3, 4]
    rows = np.zeros((3, 64), dtype=np.int32)
    rows[0, : len(copy)] = copy
    rows[1, : len(free)] = free
    drafts = LookupProposer(_config(k=3)).propose([[7], [4], []], np.array([len(copy), len(free), 0]), rows)
    assert drafts == [[8, 9, 10], [], []]
    assert drafts[0] == ngram_lookup(copy, k=3, n_min=2, n_max=5)


def test_drafts_never_run_past_the_model_length():
    tokens = [1, 2, 3, 1, 2, 3, 1, 2]
    rows = np.zeros((1, 10), dtype=np.int32)
    rows[0, : len(tokens)] = tokens
    (draft,) = LookupProposer(_config(k=4, max_model_len=10)).propose([[2]], np.array([len(tokens)]), rows)
    assert draft == [3]  # one token of room before the limit, which the target's own token needs
