"""Multi-token-prediction drafter: a one-layer head that reads the target's last hidden state (EAGLE family).

Input at position t: the target's final hidden state h_t and the embedding of token t+1, fused by a linear layer,
then one Gemma 3-style layer (RMSNorm, RoPE attention, gated MLP) and a final norm. Its output is a feature in the
target's hidden space: scored against a slice of the target's tied embedding (the few thousand tokens most frequent
in code, as Gemma 4's assistants and FR-Spec do) it gives the next draft token, and fed back with that token's
embedding it drafts the one after. The head keeps a tiny KV cache of its own over the last `window` positions,
built from the target's hidden rows as the engine hands them over, so context is never recomputed.

The shipped head (`decoding/drafting/weights/`) was trained by `python -m decoding.lab.train_mtp` for the embedded
Gemma 3 270M; loading checks the weights' sha256 and that the target's embedding is the one it was trained against.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decoding.drafting.base import Draft, DraftContext
from decoding.engine.gemma import apply_rope, rope_table
from decoding.engine.loading import sha256_file

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MANIFEST = WEIGHTS_DIR / "mtp-gemma-3-270m.json"
FINGERPRINT_TOKENS = (2, 100, 1000, 10000, 50000, 100000, 200000, 262000)  # rows checked against the target


class MTPError(ValueError):
    """The MTP head cannot serve this target: missing, corrupted, or trained for another model."""


@dataclass
class MTPConfig:
    dim: int = 640  # the target's hidden size
    n_heads: int = 4
    head_dim: int = 128
    hidden_dim: int = 2048
    window: int = 256  # positions of its own cache the head attends to
    rope_base: float = 10000.0
    eps: float = 1e-6


class Norm(nn.Module):
    """Gemma's RMSNorm (scale 1 + weight), trainable."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), 1.0 + self.weight, self.eps)


class MTPHead(nn.Module):
    """The head's weights and math; `token_ids` [K] are the target vocabulary rows it scores."""

    token_ids: Tensor  # a buffer: moves with the head, not a weight

    def __init__(self, config: MTPConfig, token_ids: Tensor):
        super().__init__()
        c = config
        self.config = c
        self.register_buffer("token_ids", token_ids.to(torch.int64), persistent=False)
        self.feature_norm, self.embed_norm = Norm(c.dim, c.eps), Norm(c.dim, c.eps)
        self.fuse = nn.Linear(2 * c.dim, c.dim, bias=False)
        self.attn_norm, self.attn_out_norm = Norm(c.dim, c.eps), Norm(c.dim, c.eps)
        self.q_norm, self.k_norm = Norm(c.head_dim, c.eps), Norm(c.head_dim, c.eps)
        self.wqkv = nn.Linear(c.dim, 3 * c.n_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)
        self.mlp_norm, self.mlp_out_norm = Norm(c.dim, c.eps), Norm(c.dim, c.eps)
        self.w_gate_up = nn.Linear(c.dim, 2 * c.hidden_dim, bias=False)
        self.w_down = nn.Linear(c.hidden_dim, c.dim, bias=False)
        self.norm = Norm(c.dim, c.eps)
        self._rope = rope_table(c.rope_base, c.head_dim, 0)

    def rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin [T, Dh] for absolute positions [T], growing the table as needed."""
        end = int(positions.max()) + 1
        if end > self._rope[0].shape[0]:
            self._rope = rope_table(self.config.rope_base, self.config.head_dim, max(end, 2 * self._rope[0].shape[0]))
        return self._rope[0][positions], self._rope[1][positions]

    def fused_input(self, feature: Tensor, embedding: Tensor) -> Tensor:
        """feature, embedding: [..., T, D] -> residual stream [..., T, D]."""
        return self.fuse(torch.cat([self.feature_norm(feature), self.embed_norm(embedding)], dim=-1))

    def project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, D] -> q, k, v [B, H, T, Dh] with RoPE at `positions` [T]."""
        B, T, _ = x.shape
        c = self.config
        q, k, v = self.wqkv(self.attn_norm(x)).view(B, T, 3, c.n_heads, c.head_dim).unbind(2)
        cos, sin = (t.to(x.dtype) for t in self.rope(positions))
        q = apply_rope(self.q_norm(q.transpose(1, 2)), cos, sin)
        k = apply_rope(self.k_norm(k.transpose(1, 2)), cos, sin)
        return q, k, v.transpose(1, 2)

    def finish(self, x: Tensor, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        """Attention of q [B, H, T, Dh] over keys/values [B, H, S, Dh] (mask [T, S]), MLP, norm -> [B, T, D]."""
        B, T, _ = x.shape
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # [B, H, T, Dh]
        x = x + self.attn_out_norm(self.wo(attn.transpose(1, 2).reshape(B, T, -1)))
        gate, up = self.w_gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        x = x + self.mlp_out_norm(self.w_down(F.gelu(gate, approximate="tanh") * up))
        return self.norm(x)

    def unrolled(self, features: Tensor, embeddings: Tensor, depth: int) -> list[Tensor]:
        """Training-time drafting: outputs [B, T, D] for each of `depth` chained steps over a whole window.

        Step 1 at position p reads the target's h_p; step j reads step j-1's output from p-1, and attends to the
        target-fed keys up to the chain's start p-j+1 plus its own chain's keys after it, exactly what drafting
        j tokens from that start sees. Rows p < j-1 of step j have no valid chain and must be left out of the loss.
        """
        B, T, D = features.shape
        positions = torch.arange(T)
        x = self.fused_input(features, embeddings)
        q, k, v = self.project(x, positions)
        keys, values, outputs = [k], [v], []
        for step in range(1, depth + 1):
            mask = chain_mask(T, step)
            out = self.finish(x, q, torch.cat(keys, dim=2), torch.cat(values, dim=2), mask)
            outputs.append(out)
            if step == depth:
                break
            shifted = torch.cat([out.new_zeros(B, 1, D), out[:, :-1]], dim=1)
            x = self.fused_input(shifted, embeddings)
            q, k, v = self.project(x, positions)
            keys.append(k)
            values.append(v)
        return outputs


def chain_mask(T: int, step: int) -> Tensor:
    """[T, step*T] bool: query p of chain step `step` sees block-1 keys at <= p-step+1 and block-i keys at p-step+i."""
    p = torch.arange(T)[:, None]
    col = torch.arange(T)[None, :]
    blocks = [col <= p - step + 1]
    blocks += [col == p - step + i for i in range(2, step + 1)]
    return torch.cat(blocks, dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Files: weights (safetensors) + manifest (JSON)


def embedding_fingerprint(embed: Tensor) -> list[float]:
    """Sums of a few fixed rows of the target's embedding: identifies the target across float32/bfloat16."""
    rows = [t for t in FINGERPRINT_TOKENS if t < embed.shape[0]]
    return [round(float(embed[t].float().sum()), 4) for t in rows]


def save_head(head: MTPHead, manifest_path: Path, target_info: dict, training: dict) -> dict:
    """Write `<name>.safetensors` (bfloat16 weights + token ids) and its manifest; returns the manifest."""
    from safetensors.torch import save_file

    weights_path = manifest_path.with_suffix(".safetensors")
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in head.state_dict().items()}
    state["token_ids"] = head.token_ids.to(torch.int32).contiguous()
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights_path), metadata={"format": "pt"})
    manifest = {
        "weights": weights_path.name,
        "sha256": sha256_file(weights_path),
        "target": target_info,
        "config": asdict(head.config),
        "vocabulary_slice": int(head.token_ids.numel()),
        "training": training,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_head(manifest_path: Path = DEFAULT_MANIFEST, embed: Tensor | None = None) -> tuple[MTPHead, dict]:
    """Load a head after checking its sha256, and, given the target's embedding [V, D], that it fits that target."""
    from safetensors.torch import load_file

    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise MTPError(f"no MTP head manifest at {manifest_path}; train one with `python -m decoding.lab.train_mtp`")
    manifest = json.loads(manifest_path.read_text())
    weights_path = manifest_path.parent / manifest["weights"]
    if not weights_path.is_file():
        raise MTPError(f"MTP head weights {weights_path} are missing (named by {manifest_path})")
    actual = sha256_file(weights_path)
    if actual != manifest["sha256"]:
        raise MTPError(
            f"MTP head weights {weights_path} have sha256 {actual}, but {manifest_path.name} expects "
            f"{manifest['sha256']}: the file is corrupted or was replaced without its manifest"
        )
    if embed is not None:
        check_target(manifest, embed, manifest_path)
    state = load_file(str(weights_path))
    config = MTPConfig(**manifest["config"])
    head = MTPHead(config, state.pop("token_ids"))
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.eval().requires_grad_(False), manifest


def check_target(manifest: dict, embed: Tensor, where: Path | str = "the manifest") -> None:
    """Raise MTPError unless `embed` [V, D] is the embedding the head was trained against."""
    expected = manifest["target"]
    shape = [int(embed.shape[0]), int(embed.shape[1])]
    if shape != [expected["vocab_size"], expected["dim"]]:
        raise MTPError(
            f"the MTP head ({where}) was trained for {expected['name']} (vocabulary {expected['vocab_size']}, "
            f"hidden size {expected['dim']}), but this target has vocabulary {shape[0]}, hidden size {shape[1]}"
        )
    got = embedding_fingerprint(embed)
    want = expected["embedding_fingerprint"]
    if len(got) != len(want) or any(abs(a - b) > 0.02 * max(1.0, abs(b)) for a, b in zip(got, want, strict=True)):
        raise MTPError(
            f"the MTP head ({where}) was trained for {expected['name']} (GGUF sha256 {expected.get('gguf_sha256')}), "
            "but this target's embedding differs; use speculation 'ngram', or train a head for this model with "
            "`python -m decoding.lab.train_mtp --model PATH --out FILE.json`"
        )


# ---------------------------------------------------------------------------------------------------------------
# Drafting


DRAFT_DTYPE = torch.bfloat16  # drafting reads the head's weights once per token; halving the bytes halves its time


class SharedHead:
    """A loaded head bound to one target, in DRAFT_DTYPE: the output slice [K, D] is built once, shared by drafters.

    Drafts need not be exact (the target verifies them), so the head runs in bfloat16 whatever the target's dtype."""

    def __init__(self, head: MTPHead, embed: Tensor, output: Tensor, manifest: dict, dtype=DRAFT_DTYPE):
        self.head, self.embed, self.manifest, self.dtype = head.to(dtype), embed, manifest, dtype
        self.out_weight = output[head.token_ids].to(dtype)  # [K, D]


_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shared_head(target, manifest_path: Path | None = None) -> SharedHead:
    """The head for `target`, loaded and checked once per target object."""
    key = Path(manifest_path or DEFAULT_MANIFEST).resolve()
    per_target = _LOADED.setdefault(target, {})
    if key not in per_target:
        if not hasattr(target, "embedding_tables"):
            raise MTPError(f"the MTP drafter needs a target with embedding tables, not {type(target).__name__}")
        embed, output = target.embedding_tables()
        head, manifest = load_head(key, embed)
        per_target[key] = SharedHead(head, embed, output, manifest)
    return per_target[key]


class MTPDrafter:
    """Drafts with the head; one instance per generation (it holds that generation's small KV cache).

    `observe(context)` takes the hidden rows the target produced since the last call (cached in the head's KV cache
    when a draft next needs them); `propose` observes, then drafts `k_max` tokens (fewer at the context's length
    limit or at the first token below `min_confidence`) chaining the head on its own outputs. The head sizes its
    drafts itself and ignores the engine's adaptive `k`: its misses are scattered rather than in runs, so a k that
    shrinks after each miss starves it, and on a CPU in bfloat16 a verify forward of 4 rows costs about what one
    row does.
    """

    name = "mtp"
    k_max_default = 3  # best measured on held-out code: longer drafts are rarely all accepted, and rows cost time
    min_confidence_default = 0.0

    def __init__(self, shared: SharedHead, k_max: int | None = None, min_confidence: float | None = None):
        self.shared = shared
        self.head = shared.head
        self.k_max = k_max or self.k_max_default
        # Stop drafting at the first token the head gives less than this probability (over its slice): each verified
        # row costs the target output-layer time, so an unlikely token is cheaper not drafted.
        self.min_confidence = self.min_confidence_default if min_confidence is None else min_confidence
        self._start = 0  # absolute position of the first cached row
        self._keys: Tensor | None = None  # [1, H, S, Dh]
        self._values: Tensor | None = None
        self._last: tuple[Tensor, Tensor] | None = None  # (x, q) of the newest target-fed row: [1, 1, D], [1, H, 1, Dh]
        self._pending: list[Tensor] = []  # target rows [n, D] observed but not yet cached, in order
        self._pending_rows = 0

    def observe(self, context: DraftContext) -> bool:
        """Take the target rows new in `context`; False when there is nothing to draft from (no hidden states).

        The rows wait until a draft needs them, so while `hybrid` copies the head costs nothing."""
        hidden = context.hidden
        if hidden is not None and hidden.shape[0]:
            self._pending.append(hidden)
            self._pending_rows += hidden.shape[0]
            window = self.head.config.window
            if self._pending_rows > window:  # rows older than the window would be dropped anyway
                self._pending = [torch.cat(self._pending)[-window:]]
                self._pending_rows = window
        return self._last is not None or self._pending_rows > 0

    @torch.inference_mode()
    def _catch_up(self, context: DraftContext) -> None:
        """Cache the waiting rows (positions up to len(context.tokens) - 2) in the head's KV cache."""
        if not self._pending:
            return
        hidden = torch.cat(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_rows = [], 0
        window = self.head.config.window
        n_all, length = hidden.shape[0], len(context.tokens)
        start = length - 1 - n_all  # position of hidden's first row
        n = min(n_all, window)
        first = length - 1 - n
        if self._keys is None or n_all >= window or not self._start <= start <= self._end:
            self._keys = self._values = None
            self._start = first
        else:
            assert self._values is not None  # cached together with the keys
            keep = start - self._start
            self._keys, self._values = self._keys[:, :, :keep], self._values[:, :, :keep]
        dtype = self.shared.dtype
        rows = hidden[-n:].to(dtype).unsqueeze(0)  # [1, n, D]
        next_ids = torch.tensor(context.tokens[first + 1 : length], dtype=torch.long)
        x = self.head.fused_input(rows, F.embedding(next_ids, self.shared.embed).to(dtype).unsqueeze(0))
        q, k, v = self.head.project(x, torch.arange(first, length - 1))
        self._append(k, v)
        self._trim()
        self._last = (x[:, -1:], q[:, :, -1:])

    @property
    def _end(self) -> int:
        return self._start + (0 if self._keys is None else self._keys.shape[2])

    def _append(self, k: Tensor, v: Tensor) -> None:
        if self._keys is None or self._values is None:
            self._keys, self._values = k, v
        else:
            self._keys, self._values = torch.cat([self._keys, k], dim=2), torch.cat([self._values, v], dim=2)

    def _trim(self) -> None:
        """Keep the last `window` target-fed rows (drafted rows beyond them are dropped by the next catch-up)."""
        assert self._keys is not None and self._values is not None  # called right after an append
        excess = self._keys.shape[2] - self.head.config.window
        if excess > 0:
            self._keys, self._values = self._keys[:, :, excess:], self._values[:, :, excess:]
            self._start += excess

    def propose(self, context: DraftContext, k: int) -> Draft:
        if not self.observe(context):
            return Draft([], source=self.name, self_sized=True)
        return self.draft(context)

    @torch.inference_mode()
    def draft(self, context: DraftContext) -> Draft:
        """Up to `k_max` tokens after `context`, which `observe` has already seen."""
        self._catch_up(context)
        head, shared = self.head, self.shared
        assert self._last is not None and self._keys is not None and self._values is not None  # observe() saw rows
        x, q = self._last
        tokens: list[int] = []
        length = self.k_max if context.limit is None else min(self.k_max, context.limit)
        for i in range(length):
            feature = head.finish(x, q, self._keys, self._values, None)  # [1, 1, D]; the newest row sees all
            logits = feature[0, 0] @ shared.out_weight.T  # [K]
            best = int(torch.argmax(logits))
            if self.min_confidence and torch.softmax(logits, dim=-1)[best] < self.min_confidence:
                break
            token = int(head.token_ids[best])
            tokens.append(token)
            if i + 1 == length:
                break
            position = torch.tensor([len(context.tokens) - 1 + i])
            x = head.fused_input(feature, F.embedding(torch.tensor([[token]]), shared.embed).to(shared.dtype))
            q, key, value = head.project(x, position)
            self._append(key, value)
        return Draft(tokens, source=self.name, self_sized=True)
