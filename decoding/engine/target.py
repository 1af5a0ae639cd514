"""The target model behind one small interface: append tokens, get hidden rows, score chosen rows, roll back.

`GemmaTarget` runs our own Gemma 3 implementation on a static cache; `HFTarget` drives any transformers causal LM
with its DynamicCache (crop() rolls it back) so `--model PATH` works for other architectures.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from decoding.engine.gemma import Gemma3, GreedyHead, KVCache
from decoding.engine.loading import DEFAULT_WEIGHTS

# Rows per output-layer product when verifying greedily. On CPU a float32 product is compute-bound past two rows
# (cost grows with rows, so stop scoring after the first rejection); a bfloat16 one is memory-bound and flat
# (score all rows at once: 0).
LOGIT_CHUNK = {torch.float32: 4}
# With `gemma.GreedyHead` (a float16 product, float32 only for the few close candidates) nine rows cost about 1.4x
# one row and seventeen 2.5x (two cores), so a full 16-token draft is scored in two products, not five.
GREEDY_HEAD_CHUNK = 9


class Target(Protocol):
    vocab_size: int
    logit_chunk: int  # rows per output-layer product under greedy verification; 0 = all at once

    @property
    def length(self) -> int: ...

    def reset(self, capacity: int) -> None:
        """Start a new sequence that will hold at most `capacity` positions."""

    def forward(self, tokens: list[int]) -> Tensor:
        """Append `tokens` to the cache; return their final hidden states [T, D]."""

    def logits(self, hidden: Tensor) -> Tensor:
        """Float32 logits [N, V] for hidden rows [N, D]."""

    def rollback(self, length: int) -> None:
        """Forget every cached position at or after `length`."""

    def embedding_tables(self) -> tuple[Tensor, Tensor]:
        """The input embedding and output layer weights, both [V, D] (the same tensor when tied)."""


class GemmaTarget:
    def __init__(self, hf_model, weights: str | None = None):
        self.weights = resolve_weights(hf_model, weights)
        self.model = Gemma3(hf_model, self.weights)
        self.vocab_size = self.model.args.vocab_size
        fast_head = self.model.head_matrix is not None or GreedyHead.available(self.model.head)
        self.logit_chunk = GREEDY_HEAD_CHUNK if fast_head else LOGIT_CHUNK.get(self.model.dtype, 0)
        self.cache: KVCache = self.model.new_cache(1)
        self._prompted = False  # a forward since `reset`: later ones are verify forwards, scored `rows_alone`

    @property
    def length(self) -> int:
        return self.cache.length

    def reset(self, capacity: int) -> None:
        if capacity > self.cache.capacity:
            self.cache = self.model.new_cache(capacity)
        self.cache.length = 0
        self._prompted = False

    def reserve(self, capacity: int) -> None:
        """Grow the cache to hold `capacity` positions, keeping what it holds (a prefix cache resumes from it)."""
        if capacity > self.cache.capacity:
            old, self.cache = self.cache, self.model.new_cache(capacity)
            self.load_rows(0, *old.rows(0, old.length))

    def cached_rows(self, start: int, end: int) -> tuple[Tensor, Tensor]:
        """Copies of the keys and values of positions start..end-1, [L, Hkv, end-start, Dh] each."""
        keys, values = self.cache.rows(start, end)
        return keys.clone(), values.clone()

    def load_rows(self, start: int, k: Tensor, v: Tensor) -> None:
        """Write keys/values [L, Hkv, n, Dh] at positions start..start+n-1; the cache then holds start+n."""
        self.rollback(start)
        end = start + k.shape[2]
        self.cache.k[:, :, start:end] = k
        self.cache.v[:, :, start:end] = v
        self.cache.length = end

    def forward(self, tokens: list[int]) -> Tensor:
        """The first forward after `reset` is the prompt's; every later one (a draft's verification, a step) scores
        each row as a one-row step would, in the formats where that is exact (`gemma.Block.attention`)."""
        rows_alone, self._prompted = self._prompted, True
        return self.model(torch.tensor(tokens, dtype=torch.long), self.cache, rows_alone)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.logits(hidden)

    def embedding_tables(self) -> tuple[Tensor, Tensor]:
        return self.model.embed, self.model.head

    def greedy(self, hidden: Tensor) -> list[int]:
        """Each row's argmax token, exactly as from `logits`, at a fraction of its cost (`gemma.GreedyHead`)."""
        return self.model.greedy(hidden)

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.cache.length:
            raise ValueError(f"cannot roll back to {length}: cache holds {self.cache.length}")
        self.cache.length = length


class HFTarget:
    weights = "float32"  # transformers' forward, as loaded

    def __init__(self, hf_model):
        from transformers import DynamicCache

        self._new_cache = DynamicCache
        self.hf_model = hf_model
        self.decoder = hf_model.get_decoder()
        self.head = hf_model.get_output_embeddings()
        self.softcap = getattr(hf_model.config, "final_logit_softcapping", None)
        self.vocab_size = self.head.weight.shape[0]
        self.logit_chunk = LOGIT_CHUNK.get(self.head.weight.dtype, 0)
        self.cache = DynamicCache()
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    def reset(self, capacity: int) -> None:
        # A config-less DynamicCache keeps every position in every layer, so crop() can always roll back.
        self.cache = self._new_cache()
        self._length = 0

    @torch.inference_mode()
    def forward(self, tokens: list[int]) -> Tensor:
        ids = torch.tensor([tokens], dtype=torch.long)
        positions = torch.arange(self._length, self._length + len(tokens)).unsqueeze(0)
        out = self.decoder(input_ids=ids, position_ids=positions, cache=self.cache, use_cache=True)
        self._length += len(tokens)
        return out.last_hidden_state[0]

    @torch.inference_mode()
    def logits(self, hidden: Tensor) -> Tensor:
        out = F.linear(hidden, self.head.weight).float()
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def embedding_tables(self) -> tuple[Tensor, Tensor]:
        return self.hf_model.get_input_embeddings().weight, self.head.weight

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot roll back to {length}: cache holds {self._length}")
        if length < self._length:
            self.cache.crop(length - self._length)  # a negative count removes that many trailing positions
        self._length = length


def resolve_weights(hf_model, weights: str | None) -> str:
    """The weight format a native target of `hf_model` runs: `weights`, or by default `DEFAULT_WEIGHTS` for a
    float32 model and the loaded dtype's own (float32) for a bfloat16 one, which the formats cannot take."""
    if weights is not None:
        return weights
    return DEFAULT_WEIGHTS if next(hf_model.parameters()).dtype == torch.float32 else "float32"


def make_target(hf_model, kind: str = "auto", weights: str | None = None) -> GemmaTarget | HFTarget:
    """kind: "native" (our Gemma 3), "hf" (transformers forward), or "auto" (native when the model is Gemma 3 text).
    `weights`: the native target's weight format (`decoding.engine.weights`; None: `resolve_weights`'s default);
    transformers' forward is float32 whatever the default."""
    if kind not in ("auto", "native", "hf"):
        raise ValueError(f"target kind must be auto, native or hf, got {kind!r}")
    is_gemma3 = getattr(hf_model.config, "model_type", None) == "gemma3_text"
    if kind == "native" or (kind == "auto" and is_gemma3):
        if not is_gemma3:
            raise ValueError(f"the native target supports gemma3_text only, not {hf_model.config.model_type!r}")
        return GemmaTarget(hf_model, weights)
    if weights not in (None, "float32"):
        raise ValueError(f"{weights} weights need the native Gemma 3 target; this model runs on transformers' forward "
                         "in float32")
    return HFTarget(hf_model)
