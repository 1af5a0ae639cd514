"""Weight formats of the embedded engine: how the decoder's matrices are stored and multiplied.

Plain decoding reads every weight once per token, so on a CPU its speed is set by the bytes it reads. Each format
stores the layers' and the output layer's matrices differently; what enters and leaves each product is float32.

| format  | bytes a weight | product |
|---|---|---|
| float32 | 4 | oneDNN (packed for 3+ rows); the output layer's argmax through `gemma.GreedyHead`: exact |
| float16 | 2 | fbgemm's half-precision product, float32 sums |
| int8    | 1 | fbgemm's int8 product: a scale per output row, each input row quantized to 8 bits by its own |
|         |   | largest value, integer sums (the default: `loading.DEFAULT_WEIGHTS`) |

The float16 and int8 products give each row the same result however many rows come with it (tested), so a verify
forward of k+1 rows scores each row as a one-row plain step does: greedy speculative decoding gives the plain
decoding of the same weights. Their greedy token is the argmax of their own logits.

Other CPU kernels are slower here (docs/measurements.md, Weight formats): torch's weight-only `_weight_int8pack_mm`
ran the 270M at 137 ms a token (float32: 52 ms), `_weight_int4pack_mm_for_cpu` read 0.8 GB/s, and oneDNN's int8
product streamed the layers at 9.4 GB/s against fbgemm's 11–12, so no format uses them.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decoding.engine.loading import WEIGHT_FORMATS


class Matrix(nn.Module):
    """x [T, in] float32 -> x @ W.T [T, out] float32, for one weight W [out, in] stored in some format."""

    nbytes: int  # what a one-row product reads
    row_invariant = True  # each row of a product is the same whatever rows come with it, bit for bit

    def rows(self, index: Tensor) -> Tensor:
        """The format's values of W's rows `index`, in float32 [n, in]."""
        raise NotImplementedError


class Float32Matrix(Matrix):
    """float32; products of three rows or more use a oneDNN-packed copy.

    On this kind of CPU a verify forward's few rows are where F.linear is weakest: one layer's four products take
    2.6 ms for 17 float32 rows unpacked and 1.1 ms with weights packed once, while one or two rows (plain
    decoding) are faster unpacked and a prompt's hundreds of rows are level. Each row of the packed product does
    not depend on how many rows there are. The packed copy is a second copy of the weights (about 400 MB for
    the 270M model's layers in float32).
    """

    PACKED_FROM_ROWS = 3
    row_invariant = False  # the unpacked and the packed products round differently

    def __init__(self, weight: Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.nbytes = weight.numel() * weight.element_size()
        self.packed: Tensor | None = None
        if weight.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available():
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
            except RuntimeError:  # a build without this op: the plain product only
                self.packed = None

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is not None and x.shape[0] >= self.PACKED_FROM_ROWS:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return F.linear(x, self.weight)

    def rows(self, index: Tensor) -> Tensor:
        return self.weight[index].float()


class Float16Matrix(Matrix):
    """float16 weights in fbgemm's packed layout; float32 activations and sums."""

    def __init__(self, weight: Tensor):
        super().__init__()
        with warnings.catch_warnings():  # fbgemm's ops are deprecated in favour of torchao, still in torch
            warnings.simplefilter("ignore")
            self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float(), None)  # rounds to half
        self.nbytes = weight.numel() * 2

    def forward(self, x: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed)

    def rows(self, index: Tensor) -> Tensor:
        weight, _ = torch.ops.quantized.linear_unpack_fp16(self.packed)
        return weight[index]


class Int8Matrix(Matrix):
    """int8 weights with one scale per output row, in fbgemm's packed layout, times each input row quantized to 8
    bits by its own largest magnitude: the sums are integers, so a row's result is exact whatever rows come with it.

    Each row is divided by its largest magnitude, so every value lies in [-1, 1], and fbgemm quantizes it with one
    fixed scale (1/127, zero point 128): a row's 8-bit values depend on that row alone. Its result is multiplied
    back. A fixed scale also spares fbgemm the batch's range, which its dynamic product measures on every call.
    """

    INPUT_SCALE, INPUT_ZERO = 1 / 127, 128

    def __init__(self, weight: Tensor):
        super().__init__()
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # [out]
        zero = torch.zeros(len(scale), dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao, still in torch
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(quantized, None)
        self.nbytes = w.numel() + len(scale) * 4

    def forward(self, x: Tensor) -> Tensor:
        largest = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True).clamp_(min=1e-30)  # [T, 1]
        product = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
        return product(x / largest, self.INPUT_SCALE, self.INPUT_ZERO, self.packed).mul_(largest)

    def rows(self, index: Tensor) -> Tensor:
        weight, _ = torch.ops.quantized.linear_unpack(self.packed)  # per-row quantized: not indexable as it is
        return weight.int_repr()[index].float() * weight.q_per_channel_scales()[index, None].float()


MATRICES: dict[str, type[Matrix]] = {
    "float32": Float32Matrix, "float16": Float16Matrix, "int8": Int8Matrix,
}


def matrix(weight: Tensor, weights: str) -> Matrix:
    """`weight` [out, in] stored in the format `weights` (one of WEIGHT_FORMATS)."""
    if weights not in MATRICES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, not {weights!r}")
    return MATRICES[weights](weight)


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """This machine's memory read bandwidth in bytes per second, as torch reads: the best of `repeats` sums over a
    `gib` GiB float32 tensor (far larger than any cache), on torch's current threads."""
    import time

    data = torch.ones(int(gib * (1 << 30)) // 4)  # written once: every page is mapped before it is timed
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best
