"""Cursor drafting in vLLM's runner, without vLLM: a request with a prediction gets the cursor drafter's draft.

The fake runner holds what the glue reads of vLLM's V1 `GPUModelRunner`; the tokenizer is the embedded model's.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from transformers import AutoTokenizer

from decoding.engine.loading import embedded_model_dir
from decoding.vllm import cursor as vllm_cursor
from decoding.vllm.drafts import rewrite_drafts

SOURCE = 'def greet(name):\n    print("Hello " + name)\n'
PROMPT = "File greet.py:\n```\n" + SOURCE + "```\nTask: use an f-string.\n```edit greet.py\n"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_dir())


def _runner_class(tokenizer, contexts: dict[str, list[int]], predictions: dict[str, str], base_draft: list[int]):
    class Runner:
        speculative_config = SimpleNamespace(num_speculative_tokens=4)
        model_config = SimpleNamespace(tokenizer=str(embedded_model_dir()))
        _draft_probs = None
        _draft_prob_req_ids = None

        def __init__(self):
            self.contexts = contexts
            self.requests = {req_id: SimpleNamespace(sampling_params=SimpleNamespace(
                extra_args={"prediction": predictions[req_id]} if req_id in predictions else None))
                for req_id in contexts}

        @property
        def input_batch(self):
            ids = list(self.contexts)
            width = max(len(c) for c in self.contexts.values()) + 8
            tokens = np.zeros((len(ids), width), dtype=np.int64)
            for row, req_id in enumerate(ids):
                tokens[row, : len(self.contexts[req_id])] = self.contexts[req_id]
            return SimpleNamespace(token_ids_cpu=tokens, req_id_to_index={r: i for i, r in enumerate(ids)},
                                   num_tokens_no_spec=np.array([len(self.contexts[r]) for r in ids]))

        def take_draft_token_ids(self):
            drafts = [list(base_draft) for _ in self.contexts]
            return SimpleNamespace(req_ids=list(self.contexts), draft_token_ids=drafts)

    rewrite_drafts(Runner, vllm_cursor.cursor_drafts)
    return Runner


def test_a_request_with_a_prediction_gets_the_cursor_draft_and_its_acceptance_is_counted(tokenizer):
    written = 'retain("    print('
    context = tokenizer(PROMPT + written).input_ids
    contexts = {"edit": context, "plain": tokenizer("Hello there").input_ids}
    runner = _runner_class(tokenizer, contexts, {"edit": SOURCE}, base_draft=[7, 7])()
    result = runner.take_draft_token_ids()
    edit_draft = result.draft_token_ids[0]
    assert tokenizer.decode(edit_draft).startswith('\\"Hello')  # the quote goes on with the file's text, escaped
    assert len(edit_draft) == 4 and result.draft_token_ids[1] == [7, 7]  # cut to k; no prediction: kept
    request = runner._retain_cursor.requests["edit"]
    assert request.drafted == 4 and request.accepted == 0
    runner.contexts["edit"] = context + edit_draft[:2] + [5]  # vLLM accepted two, then sampled its own token
    runner.take_draft_token_ids()
    assert request.accepted == 2
    runner.contexts.pop("edit")
    runner.take_draft_token_ids()  # the request left the batch: its tally is logged and dropped
    assert "edit" not in runner._retain_cursor.requests
