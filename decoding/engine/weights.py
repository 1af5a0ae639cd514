"""Weight formats of the embedded engine: how the decoder's matrices are stored and multiplied.

Plain decoding reads every weight once per token, so on a CPU its speed is set by the bytes it reads. Each format
stores the layers' and the output layer's matrices differently; what enters and leaves each product is float32.

| format  | bytes a weight | product |
|---|---|---|
| float32 | 4 | oneDNN (packed for 3+ rows); the output layer's argmax through `gemma.GreedyHead`: exact |
| float16 | 2 | fbgemm's half-precision product, float32 sums |
| int8    | 1 | Retain's kernel (int8.cpp, `kernels.py`): a scale per output row, each input row rounded to 16-bit |
|         |   | integers by its own largest value, integer sums (the default: `loading.DEFAULT_WEIGHTS`) |

The float16 and int8 products give each row the same result however many rows come with it (tested), so a verify
forward of k+1 rows scores each row as a one-row plain step does: greedy speculative decoding gives the plain
decoding of the same weights. Their greedy token is the argmax of their own logits.

torch's CPU kernels are slower here (docs/measurements.md, Weight formats): its weight-only `_weight_int8pack_mm` ran
the 270M at 137 ms a token (float32: 52 ms), `_weight_int4pack_mm_for_cpu` read 0.8 GB/s, and oneDNN's int8 product
streamed the layers at 9.4 GB/s against fbgemm's 11–12. fbgemm's int8 product costs tens of microseconds a call
beyond its bytes; Retain's kernel does not, and it streams the layers at about 17 GB/s. fbgemm's product remains the
int8 format's fallback where the kernel cannot be built.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decoding.engine.kernels import KernelUnavailable, int8_kernel
from decoding.engine.loading import WEIGHT_FORMATS


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: computed in float32, scaled by (1 + weight)."""

    def __init__(self, weight: Tensor, eps: float):
        super().__init__()
        self.scale = nn.Parameter((1.0 + weight.float()), requires_grad=False)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), self.scale.shape, self.scale, self.eps).type_as(x)


class Matrix(nn.Module):
    """x [T, in] float32 -> x @ W.T [T, out] float32, for one weight W [out, in] stored in some format."""

    nbytes: int  # what a one-row product reads
    row_invariant = True  # each row of a product is the same whatever rows come with it, bit for bit

    def product(
        self, x: Tensor, in_norm: RMSNorm | None = None, out_norm: RMSNorm | None = None, residual: Tensor | None = None
    ) -> Tensor:
        """out_norm(in_norm(x) @ W.T) + residual, each part where given: a decoder layer's product with the norms and
        the residual around it, which a format may compute in one call."""
        y = self(x if in_norm is None else in_norm(x))
        if out_norm is not None:
            y = out_norm(y)
        return y if residual is None else residual + y

    def rows(self, index: Tensor) -> Tensor:
        """The format's values of W's rows `index`, in float32 [n, in]."""
        raise NotImplementedError

    def argmax(self, x: Tensor) -> list[int]:
        """The index of each row's largest result (the lowest on a tie): an output layer's greedy tokens."""
        return self(x).argmax(-1).tolist()


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


class PackedFloat16:
    """A float32 matrix [N, K] rounded to float16 in fbgemm's packed layout, in pieces of PIECE_ROWS rows.

    fbgemm packs the 262,144-row output layer in about 12 s whole and 2 s in pieces side by side on the engine's two
    threads (docs/measurements.md). Each output column is one weight row's product, so the pieces give the very
    numbers the whole matrix gives, at the same speed.
    """

    PIECE_ROWS = 32768

    def __init__(self, weight: Tensor):
        pieces = weight.detach().float().split(self.PIECE_ROWS)
        with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=torch.get_num_threads()) as pool:
            warnings.simplefilter("ignore")  # fbgemm's ops are deprecated in favour of torchao, still in torch
            self.pieces = list(pool.map(lambda piece: torch.ops.quantized.linear_prepack_fp16(piece, None), pieces))

    def __call__(self, x: Tensor) -> Tensor:
        """x [T, K] float32 -> [T, N] float32: float16 weights, float32 sums."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            products = [torch.ops.quantized.linear_dynamic_fp16(x, piece) for piece in self.pieces]
        return products[0] if len(products) == 1 else torch.cat(products, dim=1)

    def unpacked(self) -> Tensor:
        """The float16-rounded weights [N, K], as float32."""
        return torch.cat([torch.ops.quantized.linear_unpack_fp16(piece)[0] for piece in self.pieces])


class Float16Matrix(Matrix):
    """float16 weights in fbgemm's packed layout; float32 activations and sums."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.packed = PackedFloat16(weight)
        self.nbytes = weight.numel() * 2

    def forward(self, x: Tensor) -> Tensor:
        return self.packed(x.float())

    def rows(self, index: Tensor) -> Tensor:
        return self.packed.unpacked()[index]


class Int8Matrix(Matrix):
    """int8 weights with one scale per output row, times each input row rounded to 16-bit integers by its own largest
    magnitude: the sums are integers, so a row's result is exact whatever rows come with it.

    The product is int8.cpp's (which states the arithmetic; `kernels.int8_kernel` builds it), packed in its tiles;
    it takes a layer's norms and residual in the same call (`product`). `exact_product` computes its numbers in
    torch, bit for bit, for the tests. Where the kernel cannot be built, fbgemm's int8 product runs instead, on the
    same weights with inputs rounded to 8 bits: slower, and its text follows float32's less closely
    (docs/serving.md, Weight formats).
    """

    TILE = 16  # outputs per tile of int8.cpp's packed layout
    K_BLOCK = 64  # the packed inputs' padding: one AMX tile's k
    CHUNK = 8192  # rows rounded at a time: the output layer's float32 temporaries stay small

    def __init__(self, weight: Tensor):
        super().__init__()
        w = weight.detach()
        self.n_out, self.n_in = w.shape
        self.scale = (w.abs().amax(dim=1).float() / 127).clamp(min=1e-12)  # [N]
        self.nbytes = w.numel() + self.n_out * 4
        # each input row rounds to integers up to this size: the most whose sums of K products stay within 32 bits
        self.input_levels = min(32767, (2**31 - 1) // (127 * self.n_in))
        try:
            self.path: str | None = int8_kernel()
        except KernelUnavailable as why:
            warnings.warn(f"int8 products through fbgemm, slower than Retain's kernel: {why}", RuntimeWarning,
                          stacklevel=2)
            self.path = None
        Np = -(-self.n_out // self.TILE) * self.TILE if self.path else self.n_out
        Kp = -(-self.n_in // self.K_BLOCK) * self.K_BLOCK if self.path else self.n_in
        q = torch.zeros(Np, Kp, dtype=torch.int8)  # padding: zero weights add nothing
        for start in range(0, self.n_out, self.CHUNK):
            rows = slice(start, min(start + self.CHUNK, self.n_out))
            q[rows, : self.n_in] = torch.round(w[rows].float() / self.scale[rows, None]).clamp(-127, 127)
        if self.path is None:
            with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao, still in torch
                warnings.simplefilter("ignore")
                zero = torch.zeros(self.n_out, dtype=torch.long)
                quantized = torch._make_per_channel_quantized_tensor(q, self.scale.double(), zero, 0)
                self.fbgemm = torch.ops.quantized.linear_prepack(quantized, None)
            return
        self.packed = q.view(Np // self.TILE, self.TILE, Kp // 4, 4).transpose(1, 2).contiguous()
        self.padded_scale = F.pad(self.scale, (0, Np - self.n_out))

    def forward(self, x: Tensor) -> Tensor:
        if self.path is None:
            largest = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True).clamp_(min=1e-30)  # [T, 1]
            product = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32  # scale 1/127, zero 128
            return product(x.float() / largest, 1 / 127, 128, self.fbgemm).mul_(largest)
        return self._kernel(x, None, None, None, 0.0)

    def product(
        self, x: Tensor, in_norm: RMSNorm | None = None, out_norm: RMSNorm | None = None, residual: Tensor | None = None
    ) -> Tensor:
        if self.path is None:
            return super().product(x, in_norm, out_norm, residual)
        eps = in_norm.eps if in_norm is not None else out_norm.eps if out_norm is not None else 0.0
        return self._kernel(
            x, None if in_norm is None else in_norm.scale, None if out_norm is None else out_norm.scale, residual, eps
        )

    def _kernel(self, x: Tensor, in_norm: Tensor | None, out_norm: Tensor | None, residual: Tensor | None, eps: float):
        return torch.ops.retain.int8_linear(
            x.float().contiguous(), self.packed, self.padded_scale, self.n_in, self.n_out, self.input_levels,
            INT8_PATHS[self.path], in_norm, out_norm, residual, eps,
        )

    def argmax(self, x: Tensor) -> list[int]:
        if self.path is None:
            return super().argmax(x)
        args = (self.packed, self.padded_scale, self.n_in, self.n_out, self.input_levels, INT8_PATHS[self.path])
        return torch.ops.retain.int8_argmax(x.float().contiguous(), *args).tolist()

    def exact_product(self, x: Tensor) -> Tensor:
        """int8.cpp's arithmetic in torch (without norms), bit for bit: integer sums, exact in float64."""
        x = x.float()
        levels = float(self.input_levels)
        largest = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True).clamp_(min=1e-30)  # [T, 1]
        q = torch.round(x * (torch.full_like(largest, levels) / largest))  # not L / largest: torch takes 1/x first
        sums = (q.double() @ self.weight_values().double().T).float()  # [T, N]: exact integers, rounded once
        return sums * (self.scale * (largest / levels))

    def weight_values(self, index: Tensor | None = None) -> Tensor:
        """The int8 values of W's rows `index` (all rows by default) [n, in]."""
        index = torch.arange(self.n_out) if index is None else index
        if self.path is None:
            weight, _ = torch.ops.quantized.linear_unpack(self.fbgemm)
            return weight.int_repr()[index]
        tiles = self.packed[index // self.TILE, :, index % self.TILE]  # [n, Kp/4, 4]
        return tiles.reshape(len(index), -1)[:, : self.n_in]

    def rows(self, index: Tensor) -> Tensor:
        return self.weight_values(index).float() * self.scale[index, None]


INT8_PATHS: dict[str | None, int] = {"portable": 0, "vnni": 1, "amx": 2}  # int8.cpp's `path` code per path
INT8_PRODUCTS: dict[str | None, str] = {  # by `kernels.int8_kernel`'s path; None: it could not be built
    "amx": "Retain's kernel, AMX-INT8 for several rows, AVX-512 VNNI for one",
    "vnni": "Retain's kernel, AVX-512 VNNI", "portable": "Retain's kernel, portable C++",
    None: "fbgemm: Retain's kernel could not be built",
}


def products(weights: str) -> str:
    """What computes the products of format `weights` on this machine, as the bench prints it and eval reports
    record it: their times, and int8's text, depend on it."""
    if weights != "int8":
        return {"float32": "oneDNN", "float16": "fbgemm"}[weights]
    try:
        return INT8_PRODUCTS[int8_kernel()]
    except KernelUnavailable:
        return INT8_PRODUCTS[None]


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
