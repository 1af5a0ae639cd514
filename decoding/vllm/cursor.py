"""Cursor drafting inside vLLM, per request: drafts from the file a request sends (`vllm_xargs` `prediction`).

The embedded engine's `CursorTokenDrafter` follows the edit script being written through the file and proposes
what comes next (the quote's continuation, the replaced text, the next op). Here it runs in vLLM's V1 model runner:
where the step's drafts leave the runner for the scheduler (`drafts.py`, the hook hybrid drafting uses too), a
request with a prediction gets the cursor drafter's draft wherever it proposes one, cut to the server's draft
length; the others keep the configured drafter's. vLLM verifies every draft, so output is unchanged.

Per request, the plugin counts the cursor drafts' tokens and how many vLLM accepted, and logs them when the
request leaves the batch: "Retain cursor drafts for request ID: N drafted, M accepted".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from decoding.drafting.base import DraftContext
from decoding.drafting.cursor import CursorTokenDrafter
from decoding.vllm.drafts import context_of, install_once, rewrite_drafts

log = logging.getLogger("vllm.retain_cursor")  # under vLLM's logger, so it reaches the server log


@dataclass
class CursorRequest:
    """One request's cursor drafter and its tally: the last draft's length and the context length it was made at."""

    drafter: CursorTokenDrafter
    source_ids: list[int]
    source_text: str
    drafted: int = 0
    accepted: int = 0
    pending: tuple[int, int] | None = None  # (context length, draft length) of the draft awaiting verification

    def draft(self, context: list[int], k: int) -> list[int]:
        """The cursor draft for this step (at most k tokens; [] when it proposes nothing), tallying the last one."""
        if self.pending is not None:
            length, drafted = self.pending
            self.accepted += max(0, min(drafted, len(context) - length - 1))
            self.pending = None
        draft_context = DraftContext(tokens=context, sources=[self.source_ids], source_text=self.source_text)
        tokens = self.drafter.propose(draft_context, k).tokens[:k]
        if tokens:
            self.drafted += len(tokens)
            self.pending = (len(context), len(tokens))
        return tokens


@dataclass
class CursorDrafting:
    """Per model runner: the tokenizer and each live request's `CursorRequest`."""

    tokenizer: object
    requests: dict[str, CursorRequest] = field(default_factory=dict)

    def request(self, req_id: str, prediction: str) -> CursorRequest:
        if req_id not in self.requests:
            source_ids = self.tokenizer(prediction, add_special_tokens=False).input_ids  # type: ignore[operator]
            self.requests[req_id] = CursorRequest(CursorTokenDrafter(self.tokenizer), source_ids, prediction)
        return self.requests[req_id]

    def finish_absent(self, live: set[str]) -> None:
        """Log and forget the requests that left the batch."""
        for req_id in set(self.requests) - live:
            done = self.requests.pop(req_id)
            log.info("Retain cursor drafts for request %s: %d drafted, %d accepted", req_id, done.drafted,
                     done.accepted)


def prediction_of(runner, req_id: str) -> str | None:
    state = runner.requests.get(req_id)
    params = getattr(state, "sampling_params", None)
    prediction = (getattr(params, "extra_args", None) or {}).get("prediction")
    return prediction if isinstance(prediction, str) and prediction else None


def install() -> None:
    """Wrap vLLM's V1 model runner so requests with a prediction get cursor drafts (once per process)."""
    install_once("_retain_cursor_wrapped", lambda runner_class: rewrite_drafts(runner_class, cursor_drafts))


def cursor_drafts(runner, req_ids: list[str], drafts: list[list[int]]) -> tuple[list[list[int]], list[int]] | None:
    """The `Rewrite` cursor drafting installs: each request with a prediction gets the cursor draft where it
    proposes one, cut to the server's draft length."""
    if runner.speculative_config is None:
        return None
    cursor = getattr(runner, "_retain_cursor", None)
    if cursor is None:
        from transformers import AutoTokenizer

        cursor = runner._retain_cursor = CursorDrafting(AutoTokenizer.from_pretrained(runner.model_config.tokenizer))
    k = runner.speculative_config.num_speculative_tokens
    replaced = []
    for position, req_id in enumerate(req_ids):
        prediction = prediction_of(runner, req_id)
        if prediction is None:
            continue
        tokens = cursor.request(req_id, prediction).draft(context_of(runner, req_id), k)
        if tokens:
            drafts[position] = tokens
            replaced.append(position)
    cursor.finish_absent(set(req_ids))
    return drafts, replaced
