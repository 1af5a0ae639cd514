"""Weight formats of the embedded engine: how the decoder's matrices are stored and multiplied.

Plain decoding reads every weight once per token, so on a CPU its speed is set by the bytes it reads. Each format
stores the layers' and the output layer's matrices differently; activations and sums stay float32 in all of them.

| format  | bytes a weight | product |
|---|---|---|
| float32 | 4 | oneDNN (packed for 3+ rows); the output layer's argmax through `gemma.GreedyHead`: exact |
| float16 | 2 | fbgemm's half-precision product |
| int8    | 1 | symmetric per output row (gpt-fast's int8 weight-only), `aten._weight_int8pack_mm` |
| int4    | ½ + a scale and a zero per 32 | asymmetric per group of 32 inputs, `aten._weight_int4pack_mm_for_cpu` |

The float16, int8 and int4 products give each row the same result however many rows come with it (tested), so
a verify forward of k+1 rows scores each row as a one-row plain step does: greedy speculative decoding gives the
plain decoding of the same weights. Their greedy token is the argmax of their own logits.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decoding.engine.loading import WEIGHT_FORMATS

INT4_GROUP = 32  # inputs per int4 scale and zero
INT4_MAX = 15
INT4_ROWS = 16  # torch's int4 CPU layout packs output rows in sixteens


class Matrix(nn.Module):
    """x [T, in] float32 -> x @ W.T [T, out] float32, for one weight W [out, in] stored in some format."""

    nbytes: int  # what a one-row product reads

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
        self.w16 = weight.detach().half()  # [out, in]
        with warnings.catch_warnings():  # fbgemm's ops are deprecated in favour of torchao, still in torch
            warnings.simplefilter("ignore")
            self.packed = torch.ops.quantized.linear_prepack_fp16(self.w16.float(), None)
        self.nbytes = self.w16.numel() * 2

    def forward(self, x: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed)

    def rows(self, index: Tensor) -> Tensor:
        return self.w16[index].float()


class Int8Matrix(Matrix):
    """int8 weights, one float32 scale per output row: W ≈ q * scale, q in -127..127."""

    def __init__(self, weight: Tensor):
        super().__init__()
        w = weight.detach().float()
        self.scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # [out]
        self.q = (w / self.scale[:, None]).round().clamp(-127, 127).to(torch.int8)  # [out, in]
        self.nbytes = self.q.numel() + self.scale.numel() * 4

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.aten._weight_int8pack_mm(x.float(), self.q, self.scale)

    def rows(self, index: Tensor) -> Tensor:
        return self.q[index].float() * self.scale[index, None]


class Int4Matrix(Matrix):
    """4-bit weights, a float32 scale and zero per group of INT4_GROUP inputs: W ≈ (q - 8) * scale + zero with q in
    0..15 (the layout of torch's int4 CPU product), the group's range spread over the 16 levels."""

    def __init__(self, weight: Tensor):
        super().__init__()
        rows, inputs = weight.shape
        if inputs % INT4_GROUP:
            raise ValueError(f"int4 weights need a multiple of {INT4_GROUP} inputs, not {inputs}")
        self.out = rows
        out = -(-rows // INT4_ROWS) * INT4_ROWS  # zero rows pad it to the layout, cut from every product
        padded = F.pad(weight.detach().float(), (0, 0, 0, out - rows))
        groups = padded.view(out, inputs // INT4_GROUP, INT4_GROUP)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        scale = ((high - low) / INT4_MAX).clamp(min=1e-12)  # [out, G, 1]
        q = ((groups - low) / scale).round().clamp(0, INT4_MAX).to(torch.int32)  # [out, G, 32]
        zero = low + 8 * scale
        self.q = q.view(out, inputs).to(torch.uint8)  # unpacked, for `rows`
        self.scale, self.zero = scale[..., 0], zero[..., 0]  # [out, G]
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.view(out, inputs), 1)  # [out, in/2]
        self.scales_and_zeros = torch.stack([self.scale, self.zero], dim=-1).transpose(0, 1).contiguous()  # [G, out, 2]
        self.nbytes = self.packed.numel() + self.scales_and_zeros.numel() * 4

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.float(), self.packed, INT4_GROUP, self.scales_and_zeros)
        return y if y.shape[1] == self.out else y[:, : self.out]

    def rows(self, index: Tensor) -> Tensor:
        q = self.q[index].float().view(len(index), -1, INT4_GROUP)  # [n, G, 32]
        return ((q - 8) * self.scale[index, :, None] + self.zero[index, :, None]).view(len(index), -1)


MATRICES: dict[str, type[Matrix]] = {
    "float32": Float32Matrix, "float16": Float16Matrix, "int8": Int8Matrix, "int4": Int4Matrix,
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
