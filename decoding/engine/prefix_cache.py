"""Prefix cache across requests: a new prompt resumes from the longest prefix whose keys and values are cached.

Every agent turn re-sends the system prompt, the files and the history, and on a CPU their prefill costs seconds.
`PrefixCachingTarget` wraps a `GemmaTarget` and keeps two kinds of cached positions:
- the live cache: what the previous generation left in the target (prompt and output), reused in place, no copy;
- snapshots of earlier live caches (LRU, bounded in bytes and count), taken just before a new prompt overwrites
  part of them and copied back into the live cache when they share more with a later prompt than it does.
A new sequence prefills only what follows the longest shared prefix (always at least its last token, whose logits
give the first new token). Cached rows hold the same tokens at the same positions, so they are what the prefill
would compute; the final hidden rows are kept with them, so a drafter that reads hidden states (the MTP head) sees
what an uncached target would give it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from decoding.engine.target import GemmaTarget

DEFAULT_MAX_BYTES = 1 << 30  # about 26,000 float32 positions of Gemma 3 270M (37 KiB of keys/values + hidden each)
DEFAULT_MAX_ENTRIES = 4


@dataclass
class Snapshot:
    """Cached positions 0..n-1: their tokens, keys/values [L, Hkv, n, Dh] and final hidden rows [n, D]."""

    tokens: list[int]
    k: Tensor
    v: Tensor
    hidden: Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.hidden))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]: bisect with C-speed slice compares
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class PrefixCachingTarget:
    """A `Target` that resumes each new sequence from the longest cached prefix of its first forward's tokens.

    `reused` is the number of prompt tokens the current sequence took from the cache (OpenAI's `cached_tokens`).
    """

    def __init__(
        self, target: GemmaTarget, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self.target = target
        self.vocab_size = target.vocab_size
        self.logit_chunk = target.logit_chunk
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.snapshots: list[Snapshot] = []  # least recently used first
        self.held: list[int] = []  # the token at each cached position of the live cache
        self.hidden = torch.empty(0, target.model.args.dim, dtype=target.model.dtype)  # [capacity, D]
        self.reused = 0
        self._new_sequence = False

    @property
    def length(self) -> int:
        return self.target.length

    def reset(self, capacity: int) -> None:
        """Start a new sequence; its first forward decides what of the cache it keeps."""
        self.target.reserve(capacity)
        if capacity > self.hidden.shape[0]:
            grown = torch.empty(capacity, self.hidden.shape[1], dtype=self.hidden.dtype)
            grown[: len(self.held)] = self.hidden[: len(self.held)]
            self.hidden = grown
        self._new_sequence = True
        self.reused = 0

    def forward(self, tokens: list[int]) -> Tensor:
        """Hidden rows [T, D] for `tokens`; the first forward of a sequence computes only what is not cached."""
        keep = self._resume(tokens) if self._new_sequence else 0
        start = self.target.length
        hidden = self.target.forward(tokens[keep:])  # [T - keep, D]
        self.hidden[start : start + hidden.shape[0]] = hidden
        self.held += tokens[keep:]
        return torch.cat([self.hidden[:keep], hidden]) if keep else hidden

    def logits(self, hidden: Tensor) -> Tensor:
        return self.target.logits(hidden)

    def embedding_tables(self) -> tuple[Tensor, Tensor]:
        return self.target.embedding_tables()

    def greedy(self, hidden: Tensor) -> list[int]:
        return self.target.greedy(hidden)

    def rollback(self, length: int) -> None:
        self.target.rollback(length)
        del self.held[length:]

    def _resume(self, tokens: list[int]) -> int:
        """Make the live cache hold the longest cached prefix of `tokens` but its last token; return its length."""
        self._new_sequence = False
        wanted = tokens[:-1]
        live = common_prefix(self.held, wanted)
        best, shared = None, live
        for snapshot in self.snapshots:
            if (n := common_prefix(snapshot.tokens, wanted)) > shared:
                best, shared = snapshot, n
        if best is not None:
            self.snapshots.remove(best)
            self.snapshots.append(best)  # most recently used
        if live < len(self.held):
            self._save_live()  # its positions after `live` are about to be overwritten
        self.rollback(live)
        if best is not None:
            self.target.load_rows(live, best.k[:, :, live:shared], best.v[:, :, live:shared])
            self.hidden[live:shared] = best.hidden[live:shared]
            self.held += best.tokens[live:shared]
        self.reused = shared
        return shared

    def _save_live(self) -> None:
        """Snapshot the live cache unless a snapshot already covers it; evict least recently used beyond the bounds."""
        n = len(self.held)
        if any(s.tokens[:n] == self.held for s in self.snapshots):
            return
        self.snapshots = [s for s in self.snapshots if s.tokens != self.held[: len(s.tokens)]]  # superseded
        k, v = self.target.cached_rows(0, n)
        snapshot = Snapshot(list(self.held), k, v, self.hidden[:n].clone())
        if snapshot.nbytes > self.max_bytes:
            return
        self.snapshots.append(snapshot)
        while len(self.snapshots) > self.max_entries or sum(s.nbytes for s in self.snapshots) > self.max_bytes:
            self.snapshots.pop(0)
