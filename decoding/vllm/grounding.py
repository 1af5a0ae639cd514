"""Grounded edit blocks inside vLLM, per request: the embedded server's `EditGrounding`, as a structured-output grammar.

A request asks for it in `vllm_xargs` (vLLM passes them on as `SamplingParams.extra_args`):
`{"prediction": FILE_TEXT, "grounding": "edit" | "off", "grounding_path": PATH}`; `grounding` defaults to "edit"
when a prediction is sent, as on the embedded server. Where the embedded engine asks `EditGrounding` which tokens
keep an edit block grounded in the file, vLLM asks a `StructuredOutputGrammar` for a bitmask of allowed tokens,
once per draft position. That is the constraint path vLLM 0.32's V1 runner keeps under speculative decoding: it
cuts a draft at the first token the grammar refuses (`validate_tokens`), advances the grammar through the draft to
mask each position, and rolls it back (V1 refuses custom logits processors when speculating). So grounded output
is the same with speculation on and off, and, with the same greedy choices, the embedded server's.

The plugin gives a grounded request a structured-output request vLLM schedules as one (`GRAMMAR_SPEC`, set in the
engine core, after vLLM's own validation of client grammars), and builds `GroundingGrammar` for it in place of
the backend's grammar. Both hooks are private to vLLM 0.32, as the hybrid drafter's are.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from decoding.engine.grounding import PROMPT_TAIL, EditGrounding, vocabulary
from decoding.serving.chat import stop_token_ids

GRAMMAR_SPEC = "retain:edit-grounding"  # the structured-output "grammar" a grounded request is given
MODES = ("edit", "off")


@dataclass(frozen=True)
class GroundingRequest:
    """What a request's `vllm_xargs` ask for: the file its edit blocks must be grounded in, and their path."""

    source: str | None
    path: str | None


def grounding_request(extra_args: Mapping | None) -> GroundingRequest | None:
    """The request's grounding from its `vllm_xargs`, None when off; a ValueError names a bad value."""
    args = extra_args or {}
    prediction, mode, path = args.get("prediction"), args.get("grounding"), args.get("grounding_path")
    if prediction is not None and not isinstance(prediction, str):
        raise ValueError("vllm_xargs.prediction must be the file's text, a string")
    if mode is not None and mode not in MODES:
        raise ValueError(f'vllm_xargs.grounding must be "edit" or "off", not {mode!r}')
    if path is not None and (not isinstance(path, str) or not path):
        raise ValueError("vllm_xargs.grounding_path must be a non-empty string")
    if (mode or ("edit" if prediction is not None else "off")) == "off":
        return None
    return GroundingRequest(prediction, path)


def asks_for_grounding(extra_args: Mapping | None) -> bool:
    """Whether a request's `vllm_xargs` ask for grounding, checked without failing: `install_validation` refuses a
    bad value with a 400 first; without it, the request becomes a grounded one whose grammar fails it alone."""
    args = extra_args or {}
    return args.get("grounding", "edit" if "prediction" in args else "off") != "off"


class GroundingGrammar:
    """vLLM's `StructuredOutputGrammar` interface over one request's `EditGrounding`.

    Every token vLLM commits is taken (`EditGrounding.advance`): one it was not allowed (a block where nothing was)
    releases the block, as on the embedded server. Rollback restores saved states.
    """

    def __init__(self, grounding: EditGrounding, vocab_size: int) -> None:
        self.grounding, self.vocab_size = grounding, vocab_size
        self._initial = self._state()
        self._history: list[tuple] = []

    def _state(self) -> tuple:
        g = self.grounding
        return g.reply.fork(), g.constrained_tokens, g.released_blocks

    def _restore(self, state: tuple) -> None:
        reply, self.grounding.constrained_tokens, self.grounding.released_blocks = state
        self.grounding.reply = reply.fork()

    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        for token in tokens:
            self._history.append(self._state())
            self.grounding.advance(token)
        return True

    def validate_tokens(self, tokens: list[int]) -> list[int]:
        """The longest prefix of a draft that stays grounded (the state is left as it was)."""
        saved, accepted = self._state(), []
        for token in tokens:
            if not self.grounding.allows(token):
                break
            self.grounding.advance(token)
            accepted.append(token)
        self._restore(saved)
        return accepted

    def rollback(self, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        state = self._history[-num_tokens]
        del self._history[-num_tokens:]
        self._restore(state)

    def fill_bitmask(self, bitmask: torch.Tensor, batch_index: int) -> None:
        """Row `batch_index` of vLLM's packed bitmask (bit t of the row: token t allowed)."""
        mask = self.grounding.allowed_mask()
        allowed = np.zeros(bitmask.shape[1] * 32, dtype=bool)
        size = min(len(allowed), len(mask))
        if mask[:size].any():
            allowed[:size] = mask[:size].numpy()
        else:  # nothing keeps the block grounded: the next token releases it
            allowed[:] = True
        bitmask[batch_index] = torch.from_numpy(np.packbits(allowed, bitorder="little").view(np.int32))

    def is_terminated(self) -> bool:
        return False  # vLLM's own stop checks end the reply; stop tokens are allowed only between operations

    def reset(self) -> None:
        self._history.clear()
        self._restore(self._initial)


def make_grammar(tokenizer, request: GroundingRequest, prompt_ids: list[int], vocab_size: int) -> GroundingGrammar:
    """The grammar for one grounded request, reading the end of its prompt as the embedded server does."""
    prompt_tail = tokenizer.decode(prompt_ids[-PROMPT_TAIL:])[-PROMPT_TAIL:]
    grounding = EditGrounding(vocabulary(tokenizer), request.source, stop_token_ids(tokenizer), request.path,
                              prompt_tail)
    return GroundingGrammar(grounding, vocab_size)


def install_validation() -> None:
    """Refuse a request whose `vllm_xargs` grounding values are malformed with a 400 naming the field: vLLM checks a
    request's `extra_args` while building its sampling parameters in the API server, so the check joins that."""
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams

    if getattr(SamplingParams, "_retain_validation", False):
        return
    verify_extra_args = SamplingParams._verify_extra_args

    @functools.wraps(verify_extra_args)
    def _verify_extra_args(self) -> None:
        verify_extra_args(self)
        try:
            grounding_request(self.extra_args)
        except ValueError as exc:
            raise VLLMValidationError(str(exc), parameter="vllm_xargs") from None

    SamplingParams._verify_extra_args = _verify_extra_args  # type: ignore[method-assign]
    SamplingParams._retain_validation = True  # type: ignore[attr-defined]


def install() -> None:
    """Patch vLLM 0.32's engine core: a grounded request becomes a structured-output request with our grammar."""
    from vllm.sampling_params import StructuredOutputsParams
    from vllm.v1.request import Request
    from vllm.v1.structured_output import StructuredOutputManager

    if getattr(StructuredOutputManager, "_retain_grounding", False):
        return
    from_engine_core_request = Request.from_engine_core_request.__func__  # type: ignore[attr-defined]

    @functools.wraps(from_engine_core_request)
    def grounded_request(cls, request, *args, **kwargs):
        params = request.sampling_params
        if params is not None and params.structured_outputs is None and asks_for_grounding(params.extra_args):
            structured = StructuredOutputsParams(grammar=GRAMMAR_SPEC)
            structured._backend = "xgrammar"  # the backend vLLM allocates the bitmask with, if none is chosen yet
            params.structured_outputs = structured
        return from_engine_core_request(cls, request, *args, **kwargs)

    Request.from_engine_core_request = classmethod(grounded_request)  # type: ignore[method-assign]
    create_grammar = StructuredOutputManager._create_grammar

    @functools.wraps(create_grammar)
    def _create_grammar(self, request):
        params = request.sampling_params
        if params is None or params.structured_outputs is None or params.structured_outputs.grammar != GRAMMAR_SPEC:
            return create_grammar(self, request)
        wanted = grounding_request(params.extra_args)
        assert wanted is not None
        return make_grammar(self.tokenizer, wanted, request.prompt_token_ids or [],
                            self.vllm_config.model_config.get_vocab_size())

    StructuredOutputManager._create_grammar = _create_grammar  # type: ignore[method-assign]
    StructuredOutputManager._retain_grounding = True  # type: ignore[attr-defined]
