"""Retain's int8 kernel (decoding/engine/int8.cpp, built by decoding.engine.kernels): its products are the int8
format's arithmetic bit for bit on every code path, it takes a layer's norms and residual in the same call, and where
it cannot be built the engine says why and runs fbgemm's product on the same weights."""

import warnings

import pytest
import torch

import decoding.engine.weights as weights_module
from decoding.drafting.drafters import make_drafter
from decoding.engine import kernels
from decoding.engine.generation import generate
from decoding.engine.kernels import KernelUnavailable, int8_kernel
from decoding.engine.target import GemmaTarget
from decoding.engine.weights import Int8Matrix, Matrix, RMSNorm

PATHS = {"amx": ["amx", "vnni", "portable"], "vnni": ["vnni", "portable"]}.get(int8_kernel(), ["portable"])


@pytest.fixture
def no_kernel(monkeypatch):
    """As on a machine where int8.cpp cannot be built."""

    def unavailable() -> str:
        raise KernelUnavailable("no C++ compiler ('c++' is not on PATH; set CXX to one)")

    monkeypatch.setattr(weights_module, "int8_kernel", unavailable)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("n_out", "n_in", "rows"),
                         [(96, 128, 5), (97, 30, 3), (640, 2048, 9), (1536, 640, 1), (48, 640, 17), (32, 200, 33),
                          (40, 128, 150)])
def test_each_kernel_path_computes_the_formats_arithmetic_bit_for_bit(path, n_out, n_in, rows):
    """Shapes that fill the kernel's tiles and shapes it pads (97 outputs, 30 or 200 inputs); the four-row and
    one-row loops, AMX's blocks of 16 rows and the rows left over, a prompt's chunks of 64 rows; rows of very
    different sizes, each quantized on its own (one row a thousand times the others: its 16-bit inputs use their
    high bytes in full)."""
    torch.manual_seed(n_out)
    stored = Int8Matrix(torch.randn(n_out, n_in) * torch.linspace(0.01, 2, n_out)[:, None])
    stored.path = path
    x = torch.randn(rows, n_in)
    x[0] *= 1000
    assert torch.equal(stored(x), stored.exact_product(x))
    assert all(torch.equal(stored(x[i : i + 1])[0], stored(x)[i]) for i in range(rows))


@pytest.mark.parametrize("path", PATHS)
def test_an_input_of_the_wrong_width_is_refused_though_the_padding_would_hold_it(path):
    """64 inputs pad to 128 in the kernel's tiles: 65 to 128 inputs would fit the packing, and only the weights'
    own width is right."""
    stored = Int8Matrix(torch.randn(32, 100))
    stored.path = path
    for width in (99, 101, 128):
        with pytest.raises(RuntimeError, match=f"must have K = n_in = 100 inputs, not {width}"):
            stored(torch.randn(3, width))
        with pytest.raises(RuntimeError, match=f"must have K = n_in = 100 inputs, not {width}"):
            stored.argmax(torch.randn(2, width))


def test_the_kernel_builds_on_this_machine():
    """CI's machines have a C++ compiler: the int8 format runs its own kernel there, not the fallback."""
    assert int8_kernel() in ("amx", "vnni", "portable")
    assert Int8Matrix(torch.randn(32, 16)).path == int8_kernel()


def test_a_product_with_its_norms_and_residual_is_the_layers_steps_in_one_call():
    """The fused call against the same steps one by one in torch: the norms' sums of squares round differently, so
    an input can land on the other side of an 8-bit rounding; the results agree far inside one step's size."""
    torch.manual_seed(3)
    stored = Int8Matrix(torch.randn(64, 48) * 0.1)
    in_norm, out_norm = RMSNorm(torch.randn(48) * 0.3, 1e-6), RMSNorm(torch.randn(64) * 0.3, 1e-6)
    x, residual = torch.randn(4, 48) * 5, torch.randn(4, 64)
    for parts in ({"in_norm": in_norm}, {"out_norm": out_norm, "residual": residual}):
        fused = stored.product(x, **parts)
        steps = Matrix.product(stored, x, **parts)
        assert ((fused - steps).norm(dim=1) <= 2e-3 * steps.norm(dim=1)).all(), parts
        assert not torch.allclose(fused, stored(x), atol=0.1)  # the parts were applied


def test_the_compiled_attention_inputs_are_torchs_normed_rotated_and_cached(tiny_gemma):
    """`qk_rope_cache` against the torch steps it replaces, on the tiny model past its sliding window: the hidden
    rows and every cached key and value."""
    target = GemmaTarget(tiny_gemma, "int8")
    runs = []
    for compiled in (True, False):
        for block in target.model.blocks:
            block.compiled = compiled
        cache = target.model.new_cache(32)
        hidden = target.model(torch.arange(3, 23), cache)
        hidden = torch.cat([hidden, target.model(torch.tensor([5]), cache)])
        runs.append((hidden, cache.k[:, :, :21].clone(), cache.v[:, :, :21].clone()))
    for compiled, torch_steps in zip(*runs, strict=True):
        assert torch.allclose(compiled, torch_steps, rtol=1e-3, atol=1e-4)


def test_without_the_kernel_int8_runs_fbgemm_on_the_same_weights_and_says_why(no_kernel, tiny_gemma):
    weight = torch.randn(96, 128)
    with pytest.warns(RuntimeWarning, match=r"int8 products through fbgemm.*no C\+\+ compiler"):
        stored = Int8Matrix(weight)
    assert stored.path is None
    x = torch.randn(6, 128)
    assert ((stored(x) - stored.exact_product(x)).norm(dim=1) <= 1e-2 * stored.exact_product(x).norm(dim=1)).all()
    assert all(torch.equal(stored(x[i : i + 1])[0], stored(x)[i]) for i in range(6))
    assert torch.equal(stored.weight_values(), torch.round(weight / stored.scale[:, None]).to(torch.int8))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = GemmaTarget(tiny_gemma, "int8")
    assert not any(block.compiled for block in target.model.blocks)
    prompt = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]
    assert generate(target, prompt, 32, drafter=make_drafter("ngram")).tokens == generate(target, prompt, 32).tokens


def test_a_kernel_that_cannot_be_built_is_reported_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("RETAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert kernels._load.__wrapped__() == (None, "no C++ compiler ('no-such-compiler' is not on PATH; set CXX to one)")
    monkeypatch.setenv("CXX", "false")  # a compiler that fails
    path, why = kernels._load.__wrapped__()
    assert path is None and why.startswith("false could not build int8.cpp")
    monkeypatch.setenv("RETAIN_INT8_KERNEL", "0")
    assert kernels._load.__wrapped__() == (None, "RETAIN_INT8_KERNEL=0")
    assert not list(tmp_path.rglob("*.so"))


@pytest.mark.slow
def test_a_new_machine_builds_the_kernel_once_into_its_cache(monkeypatch, tmp_path):
    """The build the first int8 model on a machine runs (about 10 s), into a fresh cache: one library, renamed
    into place whole, keyed by the source, torch and the compiler."""
    monkeypatch.setenv("RETAIN_CACHE_DIR", str(tmp_path))
    compiler = kernels._compiler()
    target = tmp_path / "kernels" / f"int8-{kernels._key(compiler)}.so"
    kernels._build(compiler, target)
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [target.name]
    assert b"int8_linear" in target.read_bytes()


@pytest.mark.parametrize("path", PATHS)
def test_the_fused_argmax_is_the_argmax_of_the_products_and_takes_the_lowest_index_on_a_tie(path):
    """The output layer's greedy token without writing its scores: rows 40 and 1000 are the same weights, so on the
    input that favours them they tie, and torch's argmax answers the lower index."""
    torch.manual_seed(5)
    weight = torch.randn(2051, 64) * 0.1  # padded: 2051 outputs are not a whole number of tiles
    weight[1000] = weight[40] = weight[40] * 5
    stored = Int8Matrix(weight)
    stored.path = path
    x = torch.randn(6, 64)
    x[0] = weight[40]
    assert stored.argmax(x) == stored.exact_product(x).argmax(-1).tolist()
    assert stored.argmax(x)[0] == 40
