"""The engine: speculative decoding gives plain decoding's tokens exactly, and the KV cache rolls back cleanly."""

import copy
import inspect

import pytest
import torch

from decoding.drafting.base import NgramDrafter
from decoding.drafting.drafters import make_drafter
from decoding.engine.generation import generate
from decoding.engine.loading import cache_root, resolve_model_dir
from decoding.engine.target import GemmaTarget, HFTarget, make_target
from decoding.lab.workloads import standard_workloads

slow = pytest.mark.slow


@pytest.fixture(scope="module")
def target(embedded_model):
    return make_target(embedded_model.model)


def encode(model, text: str) -> list[int]:
    return model.tokenizer(text).input_ids


@slow
def test_native_gemma_matches_transformers_logits(embedded_model):
    ids = encode(embedded_model, inspect.getsource(inspect))[:600]
    with torch.inference_mode():
        reference = embedded_model.model(torch.tensor([ids])).logits[0, -8:]
    native = GemmaTarget(embedded_model.model, "float32")
    native.reset(len(ids))
    hidden = native.forward(ids)
    torch.testing.assert_close(native.logits(hidden[-8:]), reference, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 17])
def test_native_forwards_of_any_size_match_transformers_past_the_window(tiny_gemma, rows):
    """A prompt of five windows (prefilled a window at a time), then forwards of `rows` tokens (one or two rows
    unpacked, more through the packed weights): every row's logits are transformers' for the whole sequence."""
    ids = torch.randint(0, 97, (60,), generator=torch.Generator().manual_seed(rows)).tolist()
    with torch.inference_mode():
        reference = tiny_gemma(torch.tensor([ids])).logits[0]
    native = GemmaTarget(tiny_gemma, "float32")
    native.reset(len(ids))
    hidden = [native.forward(ids[:40])]
    hidden += [native.forward(ids[at : at + rows]) for at in range(40, len(ids), rows)]
    torch.testing.assert_close(native.logits(torch.cat(hidden)), reference, atol=1e-4, rtol=1e-4)


@slow
@pytest.mark.parametrize("kind", [GemmaTarget, HFTarget])
def test_rollback_then_recompute_equals_a_fresh_forward(embedded_model, kind):
    ids = encode(embedded_model, inspect.getsource(inspect.getsource))
    target = kind(embedded_model.model)
    target.reset(len(ids) + 8)
    target.forward(ids[:-6])
    fresh = target.logits(target.forward(ids[-6:]))  # a later forward, as the recomputation is (`GemmaTarget.forward`)
    # Roll back over the last 6 prompt tokens after appending 5 junk tokens, then recompute them.
    target.forward([17, 23, 99, 5, 1000])
    target.rollback(len(ids) - 6)
    assert target.length == len(ids) - 6
    again = target.logits(target.forward(ids[-6:]))
    torch.testing.assert_close(again, fresh, atol=1e-3, rtol=1e-4)
    assert torch.equal(again.argmax(-1), fresh.argmax(-1))
    with pytest.raises(ValueError, match="cannot roll back"):
        target.rollback(target.length + 1)


@pytest.fixture(scope="module")
def plain_outputs(target, embedded_model):
    return {w.name: generate(target, encode(embedded_model, w.prompt), 48) for w in standard_workloads()}


@slow
@pytest.mark.parametrize("method", ["ngram", "cursor"])
@pytest.mark.parametrize("workload", standard_workloads(), ids=lambda w: w.name)
def test_greedy_speculation_is_token_identical_to_plain_decoding(
    embedded_model, target, plain_outputs, workload, method
):
    ids = encode(embedded_model, workload.prompt)
    sources = [encode(embedded_model, workload.prediction)[1:]] if workload.prediction else []
    plain = plain_outputs[workload.name]
    spec = generate(target, ids, 48, drafter=make_drafter(method, tokenizer=embedded_model.tokenizer), sources=sources)
    assert spec.tokens == plain.tokens
    assert plain.stats.target_forwards == len(plain.tokens)
    if workload.name.startswith(("copy-edit", "ot-edit")):
        # Copying from the prompt must actually pay: far fewer target forwards than tokens.
        assert spec.stats.accepted > 24
        assert spec.stats.target_forwards < len(spec.tokens) / 2


@slow
def test_speculative_sampling_is_reproducible_and_stops_on_length(embedded_model, target):
    from decoding.engine.sampling import SamplingParams

    ids = encode(embedded_model, standard_workloads()[0].prompt)
    params = SamplingParams(temperature=0.8, top_p=0.95, top_k=50, seed=7)
    first = generate(target, ids, 24, sampling=params, drafter=NgramDrafter())
    second = generate(target, ids, 24, sampling=params, drafter=NgramDrafter())
    assert first.tokens == second.tokens
    assert len(first.tokens) == 24 and first.finish_reason == "length"


@slow
def test_stop_token_ends_generation_and_is_not_emitted(embedded_model, target):
    ids = encode(embedded_model, standard_workloads()[0].prompt)
    plain = generate(target, ids, 8)
    stop = plain.tokens[3]
    stopped = generate(target, ids, 8, drafter=NgramDrafter(), stop_ids=frozenset({stop}))
    assert stopped.finish_reason == "stop"
    assert stopped.tokens == plain.tokens[: plain.tokens.index(stop)]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RETAIN_CACHE_DIR", str(tmp_path / "r"))
    assert cache_root() == tmp_path / "r"
    monkeypatch.delenv("RETAIN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "retain"


def test_model_path_that_is_not_a_model_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        resolve_model_dir(tmp_path)


def test_a_bfloat16_model_runs_as_loaded_and_follows_transformers(tiny_gemma):
    """The weight formats take float32 activations: a bfloat16 model's default target runs it as loaded, and its
    q and k heads stay bfloat16 through their norm (a float32 query beside bfloat16 keys fails in attention)."""
    model = copy.deepcopy(tiny_gemma).to(torch.bfloat16)
    target = make_target(model)
    assert target.weights == "float32"
    ids = list(range(10, 30))
    with torch.inference_mode():
        reference = model(torch.tensor([ids])).logits[0].float()
    target.reset(len(ids))
    hidden = torch.cat([target.forward(ids[:15]), target.forward(ids[15:])])  # a prompt, then a verify forward
    torch.testing.assert_close(target.logits(hidden), reference, atol=0.05, rtol=0.05)
