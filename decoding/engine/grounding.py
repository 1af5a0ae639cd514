"""Grounded decoding, token by token: the text followers of `tools.grounding` asked about a tokenizer's tokens.

While the model writes an edit block for a file the request sends, `EditGrounding` allows only the tokens whose
text keeps the block grounded in that file (what that guarantees, per format: `tools.grounding`). The engine asks
`allows(token)` of the target's own choice first (nearly always yes), and only on a refusal looks further: the
target's next best choices, then every allowed token, found by walking the vocabulary sorted by text along the
characters the block may take next (`Vocabulary`; each follower's `next_chars`). Greedy takes the best allowed
token; sampling draws from the target's distribution renormalized over the allowed tokens. Speculative
verification applies the same rule at each verified row, so grounded speculative output equals grounded plain
output.

A block where no token is allowed (a non-ASCII byte the script cannot take, say) is released: decoded freely to
its end, and counted.

This module imports nothing of the embedded engine (its model, target or generate loop): only torch, a Hugging
Face tokenizer and `tools.grounding`, so any engine's sampler (a vLLM logits processor too) can use it as it is.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch

from tools.grounding.reply import ReplyFollower, from_last_fence

GroundingMode = Literal["off", "edit"]
GROUNDING_MODES: tuple[GroundingMode, ...] = ("off", "edit")
PROMPT_TAIL = 8000  # characters at the end of a prompt looked at for a grounded block it leaves open
FIRST_CHOICES = 64  # the target's best tokens tried, in order, before the allowed set is enumerated
SAMPLING_TRIES = 32  # draws from the unmasked distribution before sampling from the enumerated allowed set
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")


class Vocabulary:
    """Each token's text as decoded alone, and the texts sorted, for finding tokens by their leading characters.

    `texts[id]` is None for control tokens (`<eos>`, turn markers) and for byte tokens of non-ASCII bytes (half a
    character: a script cannot take them, a reply outside one can).
    """

    def __init__(self, tokenizer) -> None:
        size = len(tokenizer)
        pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
        control = set(tokenizer.all_special_ids)
        control |= {index for index, added in tokenizer.added_tokens_decoder.items() if added.special}
        self.texts: list[str | None] = []
        for index, piece in enumerate(pieces):
            byte = _BYTE_PIECE.fullmatch(piece)
            if index in control:
                text = None
            elif byte:
                value = int(byte.group(1), 16)
                text = chr(value) if value < 0x80 else None
            else:
                text = piece.replace("\u2581", " ")
            self.texts.append(text or None)
        by_text: dict[str, list[int]] = {}
        for index, text in enumerate(self.texts):
            if text is not None:
                by_text.setdefault(text, []).append(index)
        self.ids_by_text = by_text
        self.sorted_texts = sorted(by_text)

    def containing(self, chars: frozenset[str]) -> tuple[list[int], torch.Tensor]:
        """(ids whose text has any of `chars`, a mask [V] of the ids whose text has none of them)."""
        return _containing(self, chars)


@cache
def vocabulary(tokenizer) -> Vocabulary:
    """The tokenizer's `Vocabulary`, built once (about a second for Gemma's 262k tokens)."""
    return Vocabulary(tokenizer)


@cache
def _containing(vocab: Vocabulary, chars: frozenset[str]) -> tuple[list[int], torch.Tensor]:
    with_chars = [i for i, text in enumerate(vocab.texts) if text is not None and not chars.isdisjoint(text)]
    free = torch.tensor([text is not None for text in vocab.texts])
    free[with_chars] = False
    return with_chars, free


@dataclass
class GroundingStats:
    blocks: int = 0  # grounded blocks the reply opened (or the prompt left open)
    constrained_tokens: int = 0  # tokens where the target's own choice was not allowed and another was taken
    released_blocks: int = 0  # blocks decoded freely because no token was allowed


class EditGrounding:
    """Follows one reply and says which tokens keep its edit blocks grounded in `source` (see the module doc).

    `prompt_tail`: the end of the prompt as text, so a reply that continues a block the prompt opened is grounded
    from its first token. `path`: when given, only blocks for that path are checked against `source`.
    """

    def __init__(
        self,
        vocab: Vocabulary,
        source: str | None,
        stop_ids: frozenset[int] = frozenset(),
        path: str | None = None,
        prompt_tail: str = "",
    ) -> None:
        self.vocab, self.stop_ids = vocab, stop_ids
        self.reply = ReplyFollower(source, path)
        if not self.reply.read(from_last_fence(prompt_tail)):  # the prompt's block is not grounded in this file
            self.reply.block = None
        self.reply.blocks = int(self.reply.block is not None)
        self.constrained_tokens = 0
        self.released_blocks = 0

    @property
    def stats(self) -> GroundingStats:
        return GroundingStats(self.reply.blocks, self.constrained_tokens, self.released_blocks)

    # -- the engine's questions -----------------------------------------------------------------------

    def allows(self, token: int) -> bool:
        block, text = self.reply.block, self.vocab.texts[token]
        if text is None:
            return block is None or (token in self.stop_ids and block.can_stop)
        if block is None and "\n" not in text:
            return True
        return self.reply.fork().read(text)

    def advance(self, token: int) -> None:
        """Take `token` as written; a token that is not allowed releases the block (and is read as free text)."""
        text = self.vocab.texts[token]
        if text is None:
            if not self.allows(token):
                self._release()
            return
        trial = self.reply.fork()
        if not trial.read(text):
            self._release()
            trial = self.reply.fork()
            if not trial.read(text):  # a block it opened does not allow the rest of it
                self._release()
                self.reply.line = ""
                return
        self.reply = trial

    def best_allowed(self, logits: torch.Tensor) -> int:
        """The allowed token with the highest logit (logits [V]); counts a constrained token."""
        self.constrained_tokens += 1
        top = torch.topk(logits, min(FIRST_CHOICES, logits.shape[-1])).indices.tolist()
        for token in top:
            if self.allows(token):
                return token
        allowed = self.allowed_tokens()
        if not allowed:
            return top[0]  # advance() releases the block
        candidates = torch.tensor(allowed)
        return int(candidates[logits[candidates].argmax()])

    def sample(self, probs: torch.Tensor, generator: torch.Generator | None) -> int:
        """One token from probs [V] renormalized over the allowed tokens."""
        draws = torch.multinomial(probs, SAMPLING_TRIES, replacement=True, generator=generator).tolist()
        for attempt, token in enumerate(draws):
            if self.allows(token):
                self.constrained_tokens += attempt > 0
                return token
        self.constrained_tokens += 1
        allowed = self.allowed_tokens()
        if not allowed:
            return draws[0]  # advance() releases the block
        masked = probs[torch.tensor(allowed)]
        weights = masked if masked.sum() > 0 else torch.ones(len(allowed))
        return allowed[int(torch.multinomial(weights, 1, generator=generator))]

    def allowed_tokens(self) -> list[int]:
        """Every allowed token id (`allowed_mask`'s)."""
        return torch.nonzero(self.allowed_mask()).flatten().tolist()

    def allowed_mask(self) -> torch.Tensor:
        """Which tokens are allowed, a mask [V] (bool): exactly `allows`, found without asking each token.

        Outside a block only tokens with a newline can be refused (they may open a block badly); in free text (an
        insert, a new line) every token without what ends it or a backtick is allowed and the others are read one by
        one (at a line's start a backtick closes the block, even inside a string); elsewhere a walk over the
        vocabulary along the characters the block may take next finds the few allowed."""
        block = self.reply.block
        if block is None:
            mask = torch.ones(len(self.vocab.texts), dtype=torch.bool)
            mask[[t for t in self.vocab.containing(frozenset("\n"))[0] if not self.allows(t)]] = False
            return mask
        allowed = [token for token in self.stop_ids if self.allows(token)]
        if block.next_chars() is None:
            with_ends, free = self.vocab.containing(block.free_ends | {"`"})
            mask = free.clone()
            allowed += [token for token in with_ends if self.allows(token)]
        else:
            mask = torch.zeros(len(self.vocab.texts), dtype=torch.bool)
            self._walk(self.reply, "", 0, len(self.vocab.sorted_texts), allowed)
        mask[allowed] = True
        return mask

    def _walk(self, reply: ReplyFollower, prefix: str, lo: int, hi: int, out: list[int]) -> None:
        """Collect the allowed tokens of sorted_texts[lo:hi], which all start with `prefix`, read by `reply`."""
        texts, ids = self.vocab.sorted_texts, self.vocab.ids_by_text
        if lo < hi and texts[lo] == prefix:
            out += ids[prefix] if prefix else []
            lo += 1
        chars = reply.block.next_chars() if reply.block is not None else None
        if chars is None:  # out of the block, or into free text: check what is left one by one
            out += [i for text in texts[lo:hi] if reply.fork().read(text[len(prefix) :]) for i in ids[text]]
            return
        for char in sorted(chars):
            start = bisect_left(texts, prefix + char, lo, hi)
            end = bisect_left(texts, prefix + chr(ord(char) + 1), start, hi)
            if start < end:
                child = reply.fork()
                if child.read(char):
                    self._walk(child, prefix + char, start, end, out)

    def _release(self) -> None:
        if self.reply.block is not None:
            self.reply.block = None
            self.released_blocks += 1
