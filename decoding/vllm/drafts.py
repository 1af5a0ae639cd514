"""Where Retain's drafters meet vLLM's V1 model runner: the step's drafts as they leave it for the scheduler.

`GPUModelRunner.take_draft_token_ids` (the CPU runner inherits it) hands the scheduler one draft per request after
each step. Hybrid drafting (`hybrid.py`) and cursor drafting (`cursor.py`) each wrap it once per process with a
`Rewrite` that replaces some requests' drafts; vLLM verifies every draft, so output is unchanged. A sampled
request verifies against the drafter's distribution, so a replaced draft's becomes one-hot on its tokens. These
are vLLM internals, so the supported versions are pinned (`plugin.check_version`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

# (runner, req_ids, drafts) -> (new drafts, positions replaced), or None to leave the step's drafts as they are
Rewrite = Callable[[object, list[str], list[list[int]]], tuple[list[list[int]], list[int]] | None]


def install_once(flag: str, wrap: Callable[[type], None]) -> None:
    """Apply `wrap` to vLLM's V1 `GPUModelRunner` unless this process did already (marked by the attribute `flag`)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner, flag, False):
        return
    wrap(GPUModelRunner)
    setattr(GPUModelRunner, flag, True)


def rewrite_drafts(runner_class: type, rewrite: Rewrite) -> None:
    """Wrap `runner_class.take_draft_token_ids` so `rewrite` may replace each step's drafts."""
    original = runner_class.take_draft_token_ids  # type: ignore[attr-defined]

    @functools.wraps(original)
    def take_draft_token_ids(self):
        result = original(self)
        if result is None:
            return result
        rewritten = rewrite(self, list(result.req_ids), list(result.draft_token_ids))
        if rewritten is None:
            return result
        drafts, replaced = rewritten
        if replaced:
            make_draft_probs_one_hot(self, [result.req_ids[p] for p in replaced], [drafts[p] for p in replaced])
        result.draft_token_ids = drafts
        return result

    runner_class.take_draft_token_ids = take_draft_token_ids  # type: ignore[attr-defined]


def context_of(runner, req_id: str) -> list[int]:
    """A request's prompt + output so far (after the step's bookkeeping, without its draft)."""
    batch = runner.input_batch
    row = batch.req_id_to_index[req_id]
    return batch.token_ids_cpu[row, : batch.num_tokens_no_spec[row]].tolist()


def make_draft_probs_one_hot(runner, req_ids: list[str], drafts: list[list[int]]) -> None:
    """Sampled requests verify against the draft distribution: a replaced draft's is one-hot on its tokens."""
    probs = runner._draft_probs  # [num_reqs, k, V] or None when every request is greedy
    if probs is None or runner._draft_prob_req_ids is None:
        return
    rows = {req_id: row for row, req_id in enumerate(runner._draft_prob_req_ids)}
    for req_id, tokens in zip(req_ids, drafts, strict=True):
        row = rows.get(req_id)
        if row is None:
            continue
        probs[row].zero_()
        for position, token in enumerate(tokens):
            probs[row, position, token] = 1.0
