"""Decoding evals on the embedded model: target forwards and decode time per drafter.

Reference-forced: for each case and edit format, the target verifies drafts against that format's minimal
correct output in the fenced block the agent's protocol writes it in (`GenerationRequest.reference`), as if
the model wrote exactly that text. Every verify forward really runs, so forwards and time are honest; what
is assumed is the output. The figures estimate the speedup for a model that writes this output, not for the
embedded 270M, which cannot write edits.

Free-running: the workloads of `decoding.lab.workloads`, greedy, the model's own output: real acceptance on
real output (decode time after the prompt, as above), reported beside the forced ones.

Times are decode time after the prompt: every drafter sees the same prompt, so it is prefilled once
(`PromptCache`) and its cost is left out of the comparison.

Forwards only (`Decoder.model_free`): under a reference, what the model-free drafters (`off`, `ngram`, `cursor`)
propose depends on the prompt and the reference alone, and what is accepted is the reference's agreeing prefix, so
their target forwards are the same whatever the model computes. A target that computes nothing gives those counts
in seconds (no times, no model-reading drafter).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from decoding.drafting.drafters import SPECULATION_METHODS, make_drafter
from decoding.engine.generation import Generation, GenerationRequest
from decoding.engine.loading import DEFAULT_WEIGHTS
from decoding.engine.target import Target, make_target
from decoding.lab.workloads import Workload, standard_workloads
from decoding.serving.chat import END_OF_TURN, gemma_chat_prompt, stop_token_ids
from tools.formats import get_format
from tools.text_files import text_lines

ALIASES = ("auto",)  # speculation methods that only name another one


def available_drafters() -> tuple[str, ...]:
    """Every speculation method the engine has ("off" first), aliases left out."""
    return tuple(method for method in SPECULATION_METHODS if method not in ALIASES)


def edit_prompt(case: dict, fmt: str) -> str:
    """A compact version of the agent's edit turn: the file as read, the task, how to answer, in Gemma's format.

    The format's instruction comes last, so the prompts of one case share the file as a common prefix.
    """
    before, path, edit_format = case["before"], _path(case), get_format(fmt)
    user = (
        f"{path}: {len(text_lines(before))} lines, {len(before)} code points\n{before}\n\n"
        f"Task: {case.get('instruction') or 'make the change'}\n\n{edit_format.instruction} Write it in one "
        f"block: a line ```{edit_format.fence} {path}, then your answer, then a line ```."
    )
    return gemma_chat_prompt([{"role": "user", "content": user}])


def written_output(case: dict, fmt: str) -> str:
    """What a model answering `edit_prompt` writes: the format's minimal correct output in its fenced block."""
    return fenced(case, fmt, get_format(fmt).reference(case["before"], case["after"]))


def fenced(case: dict, fmt: str, output: str) -> str:
    """`output` of format `fmt` in the fenced block the agent's protocol writes it in, closed on its own line."""
    newline = "\n" if output and not output.endswith("\n") else ""
    return f"```{get_format(fmt).fence} {_path(case)}\n{output}{newline}```"


def _path(case: dict) -> str:
    return case.get("path") or "file"


class PromptCache:
    """A `Target` that keeps its KV cache between generations: a new generation resumes from the longest prefix
    its prompt shares with what the cache holds, so the drafters compared on one prompt (and the formats of one
    file) prefill it once. Every forward it skips was already computed for the same tokens, and it hands back the
    hidden rows it kept for them, so a drafter that reads hidden states (the MTP head) sees what an uncached
    target would give it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.vocab_size = target.vocab_size
        self.logit_chunk = target.logit_chunk
        self.capacity = 0
        self.held: list[int] = []  # the tokens in the cache, position by position
        self.held_hidden: list[torch.Tensor] = []  # their hidden rows [n, D], in forward order
        self._new_sequence = False

    @property
    def length(self) -> int:
        return self.target.length

    def reset(self, capacity: int) -> None:
        if capacity > self.capacity:
            self.target.reset(capacity)
            self.capacity, self.held, self.held_hidden = capacity, [], []
        self._new_sequence = True

    def forward(self, tokens: list[int]) -> torch.Tensor:
        """Hidden rows [T, D] for `tokens`; a new sequence computes only what follows its cached prefix (always at
        least its last token)."""
        keep = 0
        if self._new_sequence:
            self._new_sequence = False
            while keep < min(len(self.held), len(tokens) - 1) and self.held[keep] == tokens[keep]:
                keep += 1
            self.rollback(keep)
        hidden = self.target.forward(tokens[keep:])
        self.held += tokens[keep:]
        self.held_hidden.append(hidden)
        if not keep:
            return hidden
        return torch.cat([*self._held_rows(keep), hidden])

    def _held_rows(self, length: int) -> list[torch.Tensor]:
        """The kept hidden rows of the first `length` positions, as a list of blocks."""
        blocks, total = [], 0
        for block in self.held_hidden:
            if total >= length:
                break
            blocks.append(block[: length - total])
            total += blocks[-1].shape[0]
        return blocks

    def logits(self, hidden):
        return self.target.logits(hidden)

    def rollback(self, length: int) -> None:
        self.target.rollback(length)
        del self.held[length:]
        self.held_hidden = self._held_rows(length)


class ComputesNothing:
    """A `Target` whose forwards compute nothing: for counting the forwards of reference-forced generations."""

    vocab_size, logit_chunk = 1, 0

    def __init__(self) -> None:
        self.length = 0

    def reset(self, capacity: int) -> None:
        self.length = 0

    def forward(self, tokens: list[int]) -> torch.Tensor:
        self.length += len(tokens)
        return torch.zeros(len(tokens), 1)

    def rollback(self, length: int) -> None:
        self.length = length

    def greedy(self, hidden: torch.Tensor) -> list[int]:
        return [0] * hidden.shape[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.zeros(hidden.shape[0], 1)


class Decoder:
    """The embedded model with its tokenizer, ready to time generations per drafter."""

    def __init__(self, loaded, weights: str = DEFAULT_WEIGHTS) -> None:
        self._init_with(loaded.tokenizer, make_target(loaded.model, weights=weights))

    @classmethod
    def model_free(cls) -> Decoder:
        """The embedded tokenizer over a target that computes nothing: reference-forced forwards of the model-free
        drafters, exact, without the model (times are meaningless)."""
        from transformers import AutoTokenizer

        from decoding.engine.tokenizer import tokenizer_dir

        decoder = cls.__new__(cls)
        decoder._init_with(AutoTokenizer.from_pretrained(tokenizer_dir()), ComputesNothing())
        return decoder

    def _init_with(self, tokenizer, target: Target) -> None:
        self.draft_tokens: int | None = None  # a fixed draft length for every drafter; None: the engine's adaptive one
        self.tokenizer = tokenizer
        self.target = PromptCache(target)
        self.end_of_turn = self.tokenizer.get_vocab()[END_OF_TURN]
        self.stop_ids = stop_token_ids(self.tokenizer)

    def prompt_ids(self, text: str) -> list[int]:
        return self.tokenizer(text).input_ids

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def generate(
        self,
        prompt: list[int],
        drafter: str,
        max_new_tokens: int,
        sources: Sequence[list[int]] = (),
        reference: list[int] | None = None,
    ) -> tuple[dict, list[int]]:
        """One greedy generation: its figures (tokens, target forwards, decode seconds, drafted, accepted) and
        its tokens. `seconds` runs from the first token (the prompt's forward) to the end."""
        fixed = {} if self.draft_tokens is None else dict.fromkeys(("k_min", "k_start", "k_max"), self.draft_tokens)
        request = GenerationRequest(
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            **fixed,
            drafter=make_drafter(drafter, tokenizer=self.tokenizer, target=self.target.target),
            sources=list(sources),
            stop_ids=self.stop_ids,
            reference=reference,
        )
        generation = Generation(self.target, request)
        started = None
        for _ in generation:
            started = started or time.perf_counter()
        stats = generation.stats
        figures = {
            "tokens": len(generation.tokens) + (generation.finish_reason == "stop"),  # the stop token is written too
            "target_forwards": stats.target_forwards,
            "seconds": round(time.perf_counter() - started, 4) if started else 0.0,
            "drafted": stats.drafted,
            "accepted": stats.accepted,
        }
        return figures, generation.tokens


def decode_case(
    decoder: Decoder,
    case: dict,
    formats: Sequence[str],
    drafters: Sequence[str],
    step: Callable[[str], None] = lambda label: None,
) -> dict:
    """Reference-forced figures of one case: `{drafter: {"target_forwards", "seconds", "formats": {fmt: …}}}`,
    the top-level pair summed over the formats decoded. Drafters take turns on each format, so load from other
    work on the machine falls on all of them alike."""
    sources = [decoder.text_ids(case["before"])]  # what the agent sends as `prediction`
    jobs = []
    for fmt in formats:
        reference = [*decoder.text_ids(written_output(case, fmt)), decoder.end_of_turn]
        jobs.append((fmt, decoder.prompt_ids(edit_prompt(case, fmt)), reference))
    decoder.target.reset(max(len(prompt) + len(reference) + 1 for _, prompt, reference in jobs))
    per_format: dict[str, dict] = {drafter: {} for drafter in drafters}
    for fmt, prompt, reference in jobs:
        for drafter in drafters:
            step(f"{case['id']} {fmt} {drafter}")
            figures, tokens = decoder.generate(prompt, drafter, len(reference), sources, reference)
            if [*tokens, decoder.end_of_turn] != reference:
                raise AssertionError(f"{case['id']} {fmt} {drafter}: the forced output differs from its reference")
            per_format[drafter][fmt] = figures
    return {drafter: drafter_totals(figures) for drafter, figures in per_format.items()}


def drafter_totals(per_format: dict[str, dict]) -> dict:
    """One drafter's figures on a case: `{"target_forwards", "seconds"}` summed over `formats`, and `formats`."""
    return {"target_forwards": sum(f["target_forwards"] for f in per_format.values()),
            "seconds": round(sum(f["seconds"] for f in per_format.values()), 4), "formats": per_format}


def free_running(
    decoder: Decoder,
    drafters: Sequence[str],
    max_tokens: int,
    workloads: Sequence[Workload] | None = None,
    step: Callable[[str], None] = lambda label: None,
) -> dict:
    """Greedy generations of the model's own output per workload: `{workload: {drafter: figures}}`, each with
    `same_as_off` (speculative decoding must not change greedy output; None when "off" was not run)."""
    results: dict[str, dict] = {}
    for workload in workloads if workloads is not None else standard_workloads():
        prompt = decoder.prompt_ids(workload.prompt)
        sources = [decoder.text_ids(workload.prediction)] if workload.prediction else []
        decoder.target.reset(len(prompt) + max_tokens + 1)
        rows, outputs = {}, {}
        for drafter in drafters:
            step(f"{workload.name} {drafter}")
            rows[drafter], outputs[drafter] = decoder.generate(prompt, drafter, max_tokens, sources)
        plain = outputs.get("off")
        for drafter, row in rows.items():
            row["same_as_off"] = None if plain is None else outputs[drafter] == plain
        results[workload.name] = rows
    return results


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def compare(figures: dict[str, list[dict]]) -> dict[str, dict]:
    """Per drafter, totals over `figures[drafter]` (a list of per-run figures) and the ratios to "off"."""
    totals = {}
    for drafter, runs in figures.items():
        totals[drafter] = {
            "runs": len(runs),
            "tokens": sum(run["tokens"] for run in runs),
            "target_forwards": sum(run["target_forwards"] for run in runs),
            "seconds": round(sum(run["seconds"] for run in runs), 3),
        }
    off = totals.get("off")
    for drafter, total in totals.items():
        total["tokens_per_forward"] = _ratio(total["tokens"], total["target_forwards"])
        if off is not None:
            total["forwards_vs_off"] = _ratio(off["target_forwards"], total["target_forwards"])
            total["speedup_vs_off"] = _ratio(off["seconds"], total["seconds"])
            pairs = zip(figures["off"], figures[drafter], strict=True)
            per_run = [value for a, b in pairs if (value := _ratio(a["seconds"], b["seconds"])) is not None]
            total["speedup_vs_off_median"] = round(statistics.median(per_run), 3) if per_run else None
    return totals


def summarize_free(free: dict) -> dict:
    """`{workload: {drafter: totals, ratios to off and same_as_off}}`."""
    summary = {}
    for name, rows in free.items():
        totals = compare({drafter: [figures] for drafter, figures in rows.items()})
        summary[name] = {drafter: totals[drafter] | {"same_as_off": rows[drafter]["same_as_off"]} for drafter in rows}
    return summary
