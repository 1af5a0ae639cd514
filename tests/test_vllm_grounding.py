"""Grounding inside vLLM: the embedded server's `EditGrounding` behind vLLM's structured-output grammar interface.

The unit tests drive `GroundingGrammar` as vLLM's scheduler does (bitmask per position, draft validation, accept,
rollback) with the embedded model's tokenizer. The `vllm` test serves the exported embedded model with ngram
speculation and writes the few-shot edit tasks of `evals/grounded.py` with `vllm_xargs`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from decoding.engine.grounding import EditGrounding, vocabulary
from decoding.engine.loading import embedded_model_dir
from decoding.serving.chat import stop_token_ids
from decoding.vllm.grounding import GroundingGrammar, asks_for_grounding, grounding_request, make_grammar

SOURCE = 'def greet(name):\n    print("Hello " + name)\n'
PROMPT = "File greet.py:\n```\n" + SOURCE + "```\nTask: use an f-string.\n```edit greet.py\n"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_dir())


def _allowed(grammar: GroundingGrammar, vocab_size: int) -> set[int]:
    bitmask = torch.zeros((2, (vocab_size + 31) // 32), dtype=torch.int32)
    grammar.fill_bitmask(bitmask, 1)
    bits = np.unpackbits(bitmask[1].numpy().view(np.uint8), bitorder="little")
    return set(np.flatnonzero(bits[:vocab_size]).tolist())


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_the_bitmask_is_the_embedded_groundings_allowed_set(tokenizer):
    vocab_size = len(tokenizer)
    grammar = make_grammar(tokenizer, grounding_request({"prediction": SOURCE}), _ids(tokenizer, PROMPT), vocab_size)
    grammar.accept_tokens("r", _ids(tokenizer, 'retain("    print('))
    allowed = _allowed(grammar, vocab_size)
    reference = EditGrounding(vocabulary(tokenizer), SOURCE, stop_token_ids(tokenizer), None, PROMPT)
    for token in _ids(tokenizer, 'retain("    print('):
        reference.advance(token)
    assert allowed == set(reference.allowed_tokens()) and allowed
    assert _ids(tokenizer, '"')[0] in allowed and _ids(tokenizer, "Goodbye")[0] not in allowed


def test_in_an_inserts_free_text_the_bitmask_is_exactly_the_tokens_grounding_allows(tokenizer):
    """At a line's start inside an insert, a backtick would close the block: such tokens are out, the rest in."""
    vocab_size = len(tokenizer)
    grammar = make_grammar(tokenizer, grounding_request({"prediction": SOURCE}), _ids(tokenizer, PROMPT), vocab_size)
    grammar.accept_tokens("r", _ids(tokenizer, 'retain("    print(")\ninsert("x\n'))
    allowed = _allowed(grammar, vocab_size)
    assert allowed == {token for token in range(vocab_size) if grammar.grounding.allows(token)}
    assert _ids(tokenizer, "```")[0] not in allowed and _ids(tokenizer, "    ")[0] in allowed


def test_drafts_are_cut_at_the_first_ungrounded_token_and_rollback_restores(tokenizer):
    grammar = make_grammar(tokenizer, grounding_request({"prediction": SOURCE}), _ids(tokenizer, PROMPT),
                           len(tokenizer))
    good, bad = _ids(tokenizer, 'retain("    print('), _ids(tokenizer, 'retain("    shout(')
    assert grammar.validate_tokens(good) == good
    common = next(i for i, (a, b) in enumerate(zip(good, bad, strict=False)) if a != b)
    assert grammar.validate_tokens(bad) == bad[:common]
    before = _allowed(grammar, len(tokenizer))
    grammar.accept_tokens("r", good)
    assert _allowed(grammar, len(tokenizer)) != before
    grammar.rollback(len(good))
    assert _allowed(grammar, len(tokenizer)) == before


def test_the_request_arguments():
    assert grounding_request({"prediction": SOURCE}) == grounding_request({"prediction": SOURCE, "grounding": "edit"})
    assert grounding_request({"prediction": SOURCE, "grounding": "off"}) is None
    assert grounding_request({"grounding": "edit", "grounding_path": "a.py"}).path == "a.py"
    assert grounding_request(None) is None and not asks_for_grounding(None)
    assert asks_for_grounding({"grounding": "bogus"})  # a bad value fails the request with the message below
    for bad, message in (({"grounding": "bogus"}, "must be"), ({"prediction": 3}, "file's text"),
                         ({"grounding": "edit", "grounding_path": ""}, "non-empty")):
        with pytest.raises(ValueError, match=message):
            grounding_request(bad)
