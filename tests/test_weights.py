"""The embedded engine's weight formats (decoding.engine.weights): each product is the format's own values times
the input, row by row the same however many rows come with it, and greedy speculation stays plain decoding."""

import copy

import pytest
import torch

from decoding.drafting.drafters import make_drafter
from decoding.engine.generation import generate
from decoding.engine.loading import DEFAULT_WEIGHTS, WEIGHT_FORMATS
from decoding.engine.target import GemmaTarget, make_target
from decoding.engine.weights import PackedFloat16, matrix

QUANTIZED = [fmt for fmt in WEIGHT_FORMATS if fmt != "float32"]


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(96, 128) * torch.linspace(0.01, 2, 96)[:, None]  # rows of very different scales


@pytest.mark.parametrize(("fmt", "error"), [("float32", 1e-6), ("float16", 1e-6), ("int8", 0.01)])
def test_a_product_is_the_formats_own_weights_times_the_input(weight, fmt, error):
    """float32 and float16: up to the sums' rounding; int8 also rounds each input row to 8 bits of its largest
    value (about half a percent of the result's size)."""
    stored = matrix(weight, fmt)
    x = torch.randn(5, 128)
    x[2] *= 1000  # rows of very different sizes: each is quantized on its own
    values = stored.rows(torch.arange(96))  # [96, 128] float32
    expected = x @ values.T
    assert ((stored(x) - expected).norm(dim=1) <= error * expected.norm(dim=1)).all()


@pytest.mark.parametrize(("fmt", "worst"), [("float32", 0.0), ("float16", 1e-3), ("int8", 1 / 254)])
def test_each_weight_is_stored_within_half_a_step_of_its_format(weight, fmt, worst):
    """int8: half a step of its row's largest weight ÷ 127; float16: its rounding (relative)."""
    error = (matrix(weight, fmt).rows(torch.arange(96)) - weight).abs()
    if fmt == "int8":
        assert (error <= worst * weight.abs().amax(1, keepdim=True) + 1e-6).all()
    else:
        assert (error <= worst * weight.abs() + 1e-7).all()


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_each_row_of_a_product_is_the_same_whatever_rows_come_with_it(weight, fmt):
    """What makes greedy speculation lossless: a verify forward's row is the one-row plain step's, bit for bit."""
    stored = matrix(weight, fmt)
    x = torch.randn(17, 128)
    together = stored(x)
    for row in (0, 3, 16):
        assert torch.equal(stored(x[row : row + 1])[0], together[row])


def test_a_float16_matrix_packed_in_pieces_gives_the_whole_matrixs_numbers(monkeypatch):
    """The output layer packs in pieces, side by side; the pieces must not change a single product."""
    weight, x = torch.randn(1000, 64), torch.randn(5, 64)
    whole = PackedFloat16(weight)
    monkeypatch.setattr(PackedFloat16, "PIECE_ROWS", 96)  # 10 whole pieces and a short one
    pieced = PackedFloat16(weight)
    assert len(whole.pieces) == 1 and len(pieced.pieces) == 11
    assert torch.equal(pieced(x), whole(x)) and pieced(x).shape == (5, 1000)
    assert torch.equal(pieced.unpacked(), weight.half().float())


def test_an_unknown_format_is_refused_naming_the_choices(weight, tiny_gemma):
    with pytest.raises(ValueError, match="weights must be one of float32, float16, int8, not 'int3'"):
        matrix(weight, "int3")
    with pytest.raises(ValueError, match="int8 weights need the native Gemma 3 target"):
        make_target(tiny_gemma, "hf", weights="int8")


def test_the_default_format_is_int8_where_it_applies_and_the_model_as_loaded_elsewhere(tiny_gemma):
    assert make_target(tiny_gemma).weights == DEFAULT_WEIGHTS == "int8"
    assert make_target(tiny_gemma, weights="float32").weights == "float32"
    assert make_target(tiny_gemma, "hf").weights == "float32"  # transformers' forward: no format to choose
    assert make_target(copy.deepcopy(tiny_gemma).to(torch.bfloat16)).weights == "float32"


@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_greedy_speculation_is_plain_decoding_in_each_format(tiny_gemma, fmt):
    """On the tiny model, whose text repeats: ngram drafts are accepted, and the text is plain decoding's."""
    target = GemmaTarget(tiny_gemma, fmt)
    prompt = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]
    plain = generate(target, prompt, 48).tokens
    speculative = generate(target, prompt, 48, drafter=make_drafter("ngram")).tokens
    assert speculative == plain
    assert target.model.greedy(target.model(torch.tensor(prompt), target.model.new_cache(16))[-1:]) == [plain[0]]


def test_a_format_reads_fewer_bytes_a_token(tiny_gemma):
    read = {fmt: GemmaTarget(tiny_gemma, fmt).model.bytes_per_token() for fmt in WEIGHT_FORMATS}
    assert read["float32"] > read["float16"] > read["int8"]
    assert read["int8"] < read["float32"] / 3


@pytest.mark.slow
def test_the_embedded_models_greedy_speculation_is_its_plain_decoding_in_int8(embedded_model):
    """The 270M model in int8, the format furthest from float32, on a copy edit: the cursor drafter's text is plain
    decoding's of the same weights, with most tokens drafted, and the weights read fewer bytes a token."""
    fmt = "int8"
    from decoding.lab.workloads import standard_workloads

    workload = next(w for w in standard_workloads() if w.name.startswith("copy-edit"))
    tokenizer = embedded_model.tokenizer
    ids = tokenizer(workload.prompt).input_ids
    sources = [tokenizer(workload.prediction, add_special_tokens=False).input_ids]
    target = GemmaTarget(embedded_model.model, fmt)
    plain = generate(target, ids, 48)
    spec = generate(target, ids, 48, drafter=make_drafter("cursor", tokenizer=tokenizer), sources=sources)
    assert spec.tokens == plain.tokens and len(plain.tokens) == 48
    assert spec.stats.target_forwards < len(spec.tokens) / 2
    float32 = GemmaTarget(embedded_model.model, "float32").model.bytes_per_token()
    assert target.model.bytes_per_token() < 0.4 * float32


@pytest.fixture(scope="module")
def wide_heads_gemma():
    """A random 2-layer Gemma 3 with the 270M's head size (256): CPU attention over heads this wide sums a forward of
    many rows in another order than a one-row step."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, sliding_window=512, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=1024,
    )
    return Gemma3ForCausalLM(config).eval()


@pytest.mark.parametrize("fmt", QUANTIZED)
@pytest.mark.parametrize("rows", [9, 33])
def test_a_verify_forwards_hidden_rows_are_the_one_row_steps_bit_for_bit(tiny_gemma, wide_heads_gemma, fmt, rows):
    """Before each row attended on its own, a 9-row forward's attention summed in another order than a one-row
    step's, an 8-bit rounding could flip on it, and the int8 model's speculative text left its plain text (at token
    89 of a copy edit). Then a forward of more than 32 rows (a cursor draft of 32 tokens and the pending one) still
    attended at once, and the int8 text of a cursor-drafted OT edit left its plain text. The tiny model reaches past
    its sliding window, so both kinds of layer are read."""
    for model in (tiny_gemma, wide_heads_gemma):
        target = GemmaTarget(model, fmt)
        prompt = list(range(10, 30))
        draft = [(7 * i) % 97 for i in range(rows)]
        target.reset(len(prompt) + rows)
        target.forward(prompt)
        together = target.forward(draft)
        target.rollback(len(prompt))
        one_by_one = torch.cat([target.forward([token]) for token in draft])
        assert torch.equal(together, one_by_one)
