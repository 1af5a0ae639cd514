import pytest
import torch

from decoding.engine.gemma import GreedyHead, shared_greedy_head
from decoding.engine.target import GemmaTarget


def test_the_float16_screened_argmax_is_the_float32_argmax():
    """Rows built to be hard: large and small norms, an outlier dimension, rows whose best two tokens tie exactly;
    the float32 rescoring of the candidates must pick the float32 argmax (the first index on a tie)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5000, 64, generator=gen)
    w[17] = w[4000]  # an exact tie: the lower index wins, as with argmax
    hidden = torch.randn(40, 64, generator=gen) * torch.linspace(0.1, 30, 40)[:, None]
    hidden[:, 3] *= 20  # an outlier dimension
    hidden[5:10] = w[4000] + 1e-4 * torch.randn(5, 64, generator=gen)  # rows that best match tokens 17/4000
    head = GreedyHead(w)
    assert head.argmax(hidden) == torch.mm(w, hidden.T).argmax(0).tolist()
    assert head.argmax(hidden[5:6]) == [17]


def test_a_verify_forwards_greedy_tokens_are_its_logits_argmax(tiny_gemma):
    target = GemmaTarget(tiny_gemma)
    target.reset(64)
    hidden = target.forward(list(range(3, 60)))
    assert target.greedy(hidden) == target.logits(hidden).argmax(-1).tolist()
    assert shared_greedy_head(tiny_gemma.lm_head.weight) is shared_greedy_head(tiny_gemma.lm_head.weight)


@pytest.mark.slow
def test_the_embedded_models_greedy_tokens_are_its_logits_argmax(embedded_model):
    import inspect

    target = GemmaTarget(embedded_model.model, "float32")
    ids = embedded_model.tokenizer(inspect.getsource(inspect)).input_ids[:300]
    target.reset(len(ids))
    hidden = target.forward(ids)
    greedy = [token for at in range(0, len(ids), 17) for token in target.greedy(hidden[at : at + 17])]
    assert greedy == target.logits(hidden).argmax(-1).tolist()
