"""Gemma 3 text decoder in plain PyTorch with a preallocated, roll-back-able KV cache.

Same math as transformers' Gemma3ForCausalLM (weights are taken from it), with fused QKV and gate/up projections,
one static cache for all layers, sliding-window layers reading only their window, and logits computed only for
the hidden rows the caller asks for: the 262,144 x 640 output layer is most of the model.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decoding.engine.weights import Int8Matrix, Matrix, PackedFloat16, RMSNorm, matrix


@dataclass
class GemmaArgs:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    eps: float
    sliding_window: int
    sliding: list[bool]  # per layer: True = local sliding-window attention, False = global
    rope_local_base: float
    rope_global_base: float
    attn_scale: float
    final_softcap: float | None

    @classmethod
    def from_hf(cls, config) -> GemmaArgs:
        rope = config.rope_parameters
        for kind in ("sliding_attention", "full_attention"):
            if rope[kind].get("rope_type", "default") != "default":
                raise ValueError(f"unsupported rope_type {rope[kind]['rope_type']!r} for {kind}")
        if config.attn_logit_softcapping is not None or config.hidden_activation != "gelu_pytorch_tanh":
            raise ValueError("unsupported Gemma 3 variant (attention softcapping or a different activation)")
        return cls(
            vocab_size=config.vocab_size,
            dim=config.hidden_size,
            n_layers=config.num_hidden_layers,
            n_heads=config.num_attention_heads,
            n_kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            hidden_dim=config.intermediate_size,
            eps=config.rms_norm_eps,
            sliding_window=config.sliding_window,
            sliding=[t == "sliding_attention" for t in config.layer_types],
            rope_local_base=rope["sliding_attention"]["rope_theta"],
            rope_global_base=rope["full_attention"]["rope_theta"],
            attn_scale=config.query_pre_attn_scalar**-0.5,
            final_softcap=config.final_logit_softcapping,
        )


class KVCache(nn.Module):
    """Keys/values for every layer, preallocated to `capacity` positions; `length` is the only state to roll back."""

    def __init__(self, n_layers: int, n_kv_heads: int, capacity: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        shape = (n_layers, n_kv_heads, capacity, head_dim)  # [L, Hkv, S, Dh]
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def rows(self, start: int, end: int) -> tuple[Tensor, Tensor]:
        """Views of the keys and values of positions start..end-1: [L, Hkv, end-start, Dh] each."""
        return self.k[:, :, start:end], self.v[:, :, start:end]


def head_linear(x: Tensor, w: Tensor) -> Tensor:
    """x [N, in] -> [N, out] for the output layer w [out, in].

    float32 goes through w @ x.T, which takes one row as a matrix-vector product: 31 ms for the 262,144-row layer on
    two idle cores, against 102 ms for two rows (docs/measurements.md; a grounded step's constrained token needs one
    row's logits).
    """
    if w.dtype == torch.float32:
        return torch.mm(w, x.T).T
    return F.linear(x, w)


class GreedyHead:
    """The argmax of each row's float32 logits at the cost of a float16 output layer: what greedy verification needs.

    A float32 row reads all 671 MB of the 262,144 x 640 output layer and rows past two are compute-bound, so scoring
    a k+1-row verify forward cost about k+1 times one row. Here a float16 copy of the layer (fbgemm's packed product,
    `weights.PackedFloat16`: half the bytes, float32 activations and sums) scores every row approximately; every
    token whose approximate logit is within twice a proven error bound of the row's best is then scored exactly in
    float32, and the best of those wins. The bound, (max_i ||w_i - f16(w_i)|| + 1e-4 max_i ||w_i||) ||h|| + 1e-3,
    covers the weights' rounding and the float32 sums' (640 terms), so the result is the float32 argmax while only a
    few candidates per row are scored in float32, each on its own so that its score never depends on which other
    candidates there were.
    """

    def __init__(self, w: Tensor):
        self.packed = PackedFloat16(w)
        self.w = w  # [V, D]
        norms = w.norm(dim=1)
        self.error_per_norm = float((w - w.half().float()).norm(dim=1).max() + 1e-4 * norms.max())

    @staticmethod
    def available(w: Tensor) -> bool:
        return w.dtype == torch.float32 and "fbgemm" in torch.backends.quantized.supported_engines

    def argmax(self, hidden: Tensor) -> list[int]:
        """hidden [N, D] float32 -> the index of each row's largest logit, as in (w @ hidden.T).argmax(0)."""
        approx = self.packed(hidden)  # [N, V]
        margin = 2 * (self.error_per_norm * hidden.norm(dim=1) + 1e-3)  # [N]
        floor = approx.max(dim=1).values - margin  # [N]
        tokens = []
        for row, h in enumerate(hidden):
            candidates = (approx[row] >= floor[row]).nonzero()[:, 0]  # ascending: a tie goes to the lower index
            if 16 * len(candidates) > len(self.w):  # a flat row: the whole layer is cheaper than the gather
                tokens.append(int(torch.mv(self.w, h).argmax()))
            else:
                exact = (self.w[candidates] * h).sum(dim=1)  # each dot product on its own: no blocking across rows
                tokens.append(int(candidates[exact.argmax()]))
        return tokens


_GREEDY_HEADS: dict[int, tuple[weakref.ref, GreedyHead]] = {}


def shared_greedy_head(weight: Tensor) -> GreedyHead:
    """One `GreedyHead` per output-layer parameter: every target built on a model shares its packing."""
    key = id(weight)
    entry = _GREEDY_HEADS.get(key)
    if entry is None or entry[0]() is not weight:
        entry = (weakref.ref(weight), GreedyHead(weight.detach()))
        _GREEDY_HEADS[key] = entry
        weakref.finalize(weight, _GREEDY_HEADS.pop, key, None)
    return entry[1]


def rope_table(base: float, head_dim: int, capacity: int) -> tuple[Tensor, Tensor]:
    """cos, sin: [S, Dh] for the rotate-half RoPE layout."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(capacity, dtype=torch.float32), inv_freq)  # [S, Dh/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def signed_sin(sin: Tensor) -> Tensor:
    """sin [S, Dh] with its first half negated: `rotate` then needs a roll instead of a negated copy of x."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def rotate(x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """Rotate-half RoPE: x [..., Dh]; cos and `signed_sin` broadcast to it (tables built once: `Gemma3`)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [H, T, Dh]; cos/sin: [T, Dh] as `rope_table` gives them."""
    return rotate(x, cos, signed_sin(sin))


class Block(nn.Module):
    """One decoder layer. In the formats whose products never depend on the other rows (`Matrix.row_invariant`), a
    forward `rows_alone` (a verify forward: every forward of a sequence after its prompt's) attends one row at a time,
    each as a one-row step does: the same keys, the same kernel, so every row is bit for bit the plain step's and
    greedy speculation gives the plain decoding's text. A prompt's rows attend at once under a mask, as every float32
    forward does (its layers' products differ by row count anyway, and `GreedyHead` makes its argmax exact)."""

    def __init__(self, args: GemmaArgs, layer, index: int, weights: str):
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.index = index
        self.sliding = args.sliding[index]
        self.window = args.sliding_window
        self.n_heads, self.n_kv, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.scale = args.attn_scale
        self.qkv = matrix(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]), weights)
        self.out = matrix(attn.o_proj.weight, weights)
        self.gate_up = matrix(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), weights)
        self.down = matrix(mlp.down_proj.weight, weights)
        self.row_invariant = self.qkv.row_invariant  # its products are: attend a row at a time too
        # int8 with its compiled kernel: the attention's inputs are normed, rotated and cached in one call too
        self.compiled = isinstance(self.qkv, Int8Matrix) and self.qkv.path is not None
        self.eps = args.eps
        q_scale = (1.0 + attn.q_norm.weight.detach().float()).expand(self.n_heads, -1)
        k_scale = (1.0 + attn.k_norm.weight.detach().float()).expand(self.n_kv, -1)
        self.qk_scale = torch.cat([q_scale, k_scale])  # [H+Hkv, Dh]: q's heads and k's normed in one operation
        self.attn_in_norm = RMSNorm(layer.input_layernorm.weight, args.eps)
        self.attn_out_norm = RMSNorm(layer.post_attention_layernorm.weight, args.eps)
        self.mlp_in_norm = RMSNorm(layer.pre_feedforward_layernorm.weight, args.eps)
        self.mlp_out_norm = RMSNorm(layer.post_feedforward_layernorm.weight, args.eps)

    def attention(
        self, x: Tensor, cache: KVCache, start: int, rope: tuple[Tensor, Tensor], mask: Tensor, lo: int,
        rows_alone: bool,
    ) -> Tensor:
        """x: [T, D] (before its norm) at positions start..start+T-1 -> the heads' outputs [T, H Dh]. Attends to
        cache[lo:start+T] under `mask` [T, start+T-lo], or a row at a time when `rows_alone` in a row-invariant
        format. rope: cos and `signed_sin` [T, 1, Dh]."""
        T = x.shape[0]
        H, Hkv = self.n_heads, self.n_kv
        qkv = self.qkv.product(x, in_norm=self.attn_in_norm)  # [T, (H+2Hkv) Dh]
        if self.compiled:
            q = torch.ops.retain.qk_rope_cache(
                qkv, self.qk_scale, rope[0].view(T, -1), rope[1].view(T, -1), cache.k, cache.v, self.index, start,
                self.eps,
            )  # [H, T, Dh]
        else:
            qkv = qkv.view(T, H + 2 * Hkv, self.head_dim)
            qk = F.rms_norm(qkv[:, : H + Hkv].float(), (self.head_dim,), None, self.eps) * self.qk_scale
            qk = rotate(qk.type_as(x), *rope)  # [T, H+Hkv, Dh]
            q, k = qk[:, :H].transpose(0, 1), qk[:, H:].transpose(0, 1)  # [H, T, Dh], [Hkv, T, Dh]
            v = qkv[:, H + Hkv :].transpose(0, 1)  # [Hkv, T, Dh]
            cache.k[self.index, :, start : start + T] = k
            cache.v[self.index, :, start : start + T] = v
        if self.row_invariant and T == 1:
            out = self._attend(q, cache, start)  # [H, 1, Dh]
        elif self.row_invariant and rows_alone:
            out = torch.cat([self._attend(q[:, i : i + 1], cache, start + i) for i in range(T)], dim=1)  # [H, T, Dh]
        else:
            keys = cache.k[self.index, :, lo : start + T]  # [Hkv, S, Dh]
            values = cache.v[self.index, :, lo : start + T]
            out = F.scaled_dot_product_attention(
                q.unsqueeze(0), keys.unsqueeze(0), values.unsqueeze(0), attn_mask=mask, scale=self.scale,
                enable_gqa=True,
            )[0]  # [H, T, Dh]
        return out.transpose(0, 1).reshape(T, H * self.head_dim)

    def _attend(self, q: Tensor, cache: KVCache, position: int) -> Tensor:
        """q: [H, 1, Dh] at `position`, over every key it sees (its window, on a sliding layer) -> [H, 1, Dh]."""
        lo = max(0, position - self.window + 1) if self.sliding else 0
        keys = cache.k[self.index, :, lo : position + 1]  # [Hkv, S, Dh]
        values = cache.v[self.index, :, lo : position + 1]
        grouped = q.reshape(self.n_kv, -1, self.head_dim)  # [Hkv, H/Hkv, Dh]: the heads that share a key head
        scores = torch.bmm(grouped, keys.transpose(1, 2)).mul_(self.scale)  # [Hkv, H/Hkv, S]
        return torch.bmm(scores.softmax(-1), values).view_as(q)  # one row: two products beat SDPA's tiled kernel

    def forward(self, x: Tensor, cache: KVCache, start: int, rope, mask: Tensor, lo: int, rows_alone: bool) -> Tensor:
        heads = self.attention(x, cache, start, rope, mask, lo, rows_alone)  # [T, H Dh]
        x = self.out.product(heads, out_norm=self.attn_out_norm, residual=x)
        gate, up = self.gate_up.product(x, in_norm=self.mlp_in_norm).chunk(2, dim=-1)
        return self.down.product(F.gelu(gate, approximate="tanh") * up, out_norm=self.mlp_out_norm, residual=x)


class Gemma3(nn.Module):
    """forward(tokens, cache) -> final hidden rows; logits(rows) -> vocabulary scores for just those rows.

    `weights`: how the layers' and the output layer's matrices are stored (`decoding.engine.weights`); the input
    embedding stays as loaded (a token reads one of its rows).
    """

    def __init__(self, hf_model, weights: str):
        super().__init__()
        args = GemmaArgs.from_hf(hf_model.config)
        decoder = hf_model.model
        self.args = args
        self.dtype = decoder.embed_tokens.weight.dtype
        if weights != "float32" and self.dtype != torch.float32:
            raise ValueError(f"{weights} weights take float32 activations: load the model in float32")
        self.embed = nn.Parameter(decoder.embed_tokens.weight.detach(), requires_grad=False)  # [V, D]
        self.embed_scale = torch.tensor(args.dim**0.5, dtype=self.dtype)
        self.blocks = nn.ModuleList(Block(args, layer, i, weights) for i, layer in enumerate(decoder.layers))
        self.norm = RMSNorm(decoder.norm.weight, args.eps)
        self._head_weight = hf_model.get_output_embeddings().weight
        self.head = self._head_weight.detach()  # [V, D]; the embedding when tied
        self.head_matrix: Matrix | None = None if weights == "float32" else matrix(self.head, weights)
        if self.head_matrix is None and GreedyHead.available(self.head):
            shared_greedy_head(self._head_weight)  # packed now (seconds, once per model), not in the first request
        self._rope_capacity = 0

    def bytes_per_token(self) -> int:
        """The weight bytes a plain decoding step reads: every layer matrix once, the output layer as the greedy
        argmax reads it (float32: `GreedyHead`'s float16 copy) and one embedding row."""
        layers = sum(m.nbytes for m in self.blocks.modules() if isinstance(m, Matrix))
        if self.head_matrix is not None:
            head = self.head_matrix.nbytes
        elif GreedyHead.available(self.head):
            head = self.head.numel() * 2
        else:
            head = self.head.numel() * self.head.element_size()
        return layers + head + self.embed.shape[1] * self.embed.element_size()

    def new_cache(self, capacity: int) -> KVCache:
        self._ensure_rope(capacity)
        a = self.args
        return KVCache(a.n_layers, a.n_kv_heads, capacity, a.head_dim, self.dtype)

    def _ensure_rope(self, capacity: int) -> None:
        if capacity <= self._rope_capacity:
            return
        a = self.args
        self.rope_local = self._rope_rows(a.rope_local_base, capacity)
        self.rope_global = self._rope_rows(a.rope_global_base, capacity)
        self._rope_capacity = capacity

    def _rope_rows(self, base: float, capacity: int) -> tuple[Tensor, Tensor]:
        """cos and `signed_sin` [S, 1, Dh]: a position's row broadcasts over the heads."""
        cos, sin = rope_table(base, self.args.head_dim, capacity)
        return cos.to(self.dtype).unsqueeze(1), signed_sin(sin).to(self.dtype).unsqueeze(1)

    @torch.inference_mode()
    def forward(self, tokens: Tensor, cache: KVCache, rows_alone: bool = False) -> Tensor:
        """tokens: [T] appended at cache.length; returns final-normed hidden states [T, D]. `rows_alone`: score each
        row as a one-row step does, in the formats that can (a verify forward; see `Block.attention`).

        A long prompt goes through in chunks of the sliding window: each chunk's local layers then attend to at
        most two windows of keys instead of the whole prompt (2,000 tokens: 2.8 s instead of 3.9 s on two cores;
        4,000: 5.7 s instead of 12.3 s).
        """
        chunk = self.args.sliding_window
        if tokens.shape[0] <= chunk:
            return self._forward(tokens, cache, rows_alone)
        return torch.cat([self._forward(part, cache, rows_alone) for part in tokens.split(chunk)])

    def _forward(self, tokens: Tensor, cache: KVCache, rows_alone: bool) -> Tensor:
        T, start = tokens.shape[0], cache.length
        end = start + T
        if end > cache.capacity:
            raise ValueError(f"KV cache full: {end} positions needed, capacity {cache.capacity}")
        positions = torch.arange(start, end)
        window = self.args.sliding_window
        lo_local = max(0, start - window + 1)
        kv_global = torch.arange(0, end)
        kv_local = kv_global[lo_local:]
        mask_global = kv_global[None, :] <= positions[:, None]  # [T, end]
        mask_local = (kv_local[None, :] <= positions[:, None]) & (kv_local[None, :] > positions[:, None] - window)
        rope_local = (self.rope_local[0][start:end], self.rope_local[1][start:end])
        rope_global = (self.rope_global[0][start:end], self.rope_global[1][start:end])
        x = F.embedding(tokens, self.embed) * self.embed_scale  # [T, D]
        for block in self.blocks:
            if block.sliding:
                x = block(x, cache, start, rope_local, mask_local, lo_local, rows_alone)
            else:
                x = block(x, cache, start, rope_global, mask_global, 0, rows_alone)
        cache.length = end
        return self.norm(x)

    @torch.inference_mode()
    def greedy(self, hidden: Tensor) -> list[int]:
        """hidden: [N, D] -> each row's argmax token, as `logits(hidden).argmax(-1)` (the softcap keeps the order)."""
        if self.head_matrix is not None:
            return self.head_matrix.argmax(hidden.float())
        if not GreedyHead.available(self.head):
            return self.logits(hidden).argmax(-1).tolist()
        return shared_greedy_head(self._head_weight).argmax(hidden.float())

    @torch.inference_mode()
    def logits(self, hidden: Tensor) -> Tensor:
        """hidden: [N, D] -> float32 logits [N, V]."""
        if self.head_matrix is not None:
            out = self.head_matrix(hidden.float())
        else:
            out = head_linear(hidden, self.head).float()
        if self.args.final_softcap is not None:
            out = torch.tanh(out / self.args.final_softcap) * self.args.final_softcap
        return out
