"""Hybrid drafting inside vLLM: prompt lookup where it matches, else the model drafter (Gemma 4's MTP assistant).

vLLM runs one speculative method per server. This plugin adds Retain's lookup in front of the configured model
drafter: after every step, each request whose prompt + output ends in an n-gram (at least `n_min` tokens) that
occurred earlier gets the tokens that followed it as its draft; the others keep the model drafter's draft. vLLM
verifies either losslessly. The lookup is `decoding.drafting.base.ngram_lookup`, the embedded engine's.

Retain's vLLM plugin (`decoding.vllm.plugin`) installs it where `RETAIN_VLLM_HYBRID=N_MIN,N_MAX` is set
(`agent serve --engine vllm --speculation hybrid` sets it, with `VLLM_USE_V2_MODEL_RUNNER=0`: V1 only). It
wraps two methods of vLLM's `GPUModelRunner` (the CPU runner inherits them): `__init__`, to check the drafter
chosen by its if/elif chain is a model drafter, and `take_draft_token_ids`, where the step's drafts leave the
runner for the scheduler (`drafts.py`). Both are private to vLLM, so the supported versions are pinned.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from decoding.drafting.base import ngram_lookup
from decoding.vllm.drafts import context_of, install_once, rewrite_drafts

LOOKUP_DRAFTERS = ("ngram", "ngram_gpu", "suffix")  # drafters that are lookups already: nothing to put in front
ENV = "RETAIN_VLLM_HYBRID"

log = logging.getLogger("vllm.retain_hybrid")  # under vLLM's logger, so it reaches the server log


def hybrid_draft(context: Sequence[int], model_draft: Sequence[int], n_min: int, n_max: int) -> tuple[list[int], bool]:
    """The draft for one request: (tokens, True) from the lookup when it matches, else (model_draft, False).

    The draft keeps the model drafter's length (vLLM schedules k tokens a step); a shorter lookup draft is completed
    with the model draft's later positions, which cost nothing extra to verify.
    """
    if not model_draft:
        return [], False
    lookup = ngram_lookup(context, k=len(model_draft), n_min=n_min, n_max=n_max)
    if not lookup:
        return list(model_draft), False
    return lookup + list(model_draft[len(lookup) :]), True


def parse_setting(value: str) -> tuple[int, int]:
    """`RETAIN_VLLM_HYBRID`'s "N_MIN,N_MAX"."""
    try:
        n_min, n_max = (int(part) for part in value.split(","))
    except ValueError:
        raise ValueError(f"{ENV} must be N_MIN,N_MAX (e.g. 2,4), not {value!r}") from None
    if not 1 <= n_min <= n_max:
        raise ValueError(f"{ENV} needs 1 <= N_MIN <= N_MAX, got {value!r}")
    return n_min, n_max


@dataclass
class HybridLookup:
    """Per model runner: the lookup's settings and how many drafts came from each source."""

    n_min: int
    n_max: int
    lookup_drafts: int = 0
    model_drafts: int = 0

    def rewrite(self, contexts: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]]) -> tuple[list, list[int]]:
        """Each request's hybrid draft, and the rows whose draft now comes from the lookup."""
        rewritten, from_lookup = [], []
        for row, (context, draft) in enumerate(zip(contexts, drafts, strict=True)):
            tokens, used_lookup = hybrid_draft(context, draft, self.n_min, self.n_max)
            rewritten.append(tokens)
            if used_lookup:
                from_lookup.append(row)
            if draft:
                self.lookup_drafts += used_lookup
                self.model_drafts += not used_lookup
        return rewritten, from_lookup


def install(n_min: int, n_max: int) -> None:
    """Wrap vLLM's V1 model runner so its drafts get the lookup in front (once per process)."""

    def wrap(runner_class: type) -> None:
        _wrap_init(runner_class, n_min, n_max)
        rewrite_drafts(runner_class, lookup_in_front)

    install_once("_retain_hybrid_wrapped", wrap)


def _wrap_init(runner_class, n_min: int, n_max: int) -> None:
    original = runner_class.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        config = self.speculative_config
        if config is None or config.method in LOOKUP_DRAFTERS:
            method = None if config is None else config.method
            raise RuntimeError(f"hybrid drafting puts the lookup in front of another drafter (mtp, draft_model, "
                               f"eagle, custom_class); the speculative method is {method!r}")
        if self.use_async_scheduling:
            raise RuntimeError("hybrid drafting rewrites drafts on the host after each step: start vLLM with "
                               "--no-async-scheduling")
        self._retain_hybrid = HybridLookup(n_min, n_max)
        log.info("Retain hybrid drafting on vLLM's V1 model runner (%s): n-gram lookup (n %d..%d) in front of %s",
                 type(self).__name__, n_min, n_max, config.method)

    runner_class.__init__ = __init__


def lookup_in_front(runner, req_ids: list[str], drafts: list[list[int]]) -> tuple[list[list[int]], list[int]] | None:
    """The `Rewrite` hybrid drafting installs: the lookup's draft wherever it matches (`HybridLookup.rewrite`)."""
    hybrid = getattr(runner, "_retain_hybrid", None)
    if hybrid is None:
        return None
    return hybrid.rewrite([context_of(runner, req_id) for req_id in req_ids], drafts)
