"""Editing evals, measuring: output tokens per edit format, and whether each format's output applies.

For every case (a file before and after one edit) and every format (`tools.formats`), the eval takes the
minimal correct output, counts its tokens with the embedded Gemma tokenizer, applies it with that format's
own applier and checks the result is exactly `after`; then it applies model-like perturbations of it
(miscounted OT retains, trimmed whitespace, missing context lines) and checks again, and notes which of them
grounded decoding (`decoding.engine.grounding`) would still let a model write: the grounded apply rate is over
those alone. These are the costs of outputs a model would have to write, not of outputs a model wrote. The
other jobs: summarising (`evals.summary`), decoding per drafter (`evals.decode_run`), resuming a stopped run
(`evals.resume`), live runs (`evals.live`); the command is `evals.command`, the tables and plots `evals.report`
and the JSON report `evals.schema`.
"""

from __future__ import annotations

from collections.abc import Callable

from evals.progress import Progress
from evals.schema import CaseFigures, FormatFigures, Perturbation, Report, Summary
from evals.summary import summarize
from tools.formats import FormatError, get_format
from tools.syntax import language_for

OT_TRIALS, OT_TRIALS_QUICK = 3, 1  # miscounted-retain perturbations per OT script


def measure_case(
    case: dict, formats: tuple[str, ...], count_tokens: Callable[[str], int], ot_trials: int
) -> CaseFigures:
    """One case's figures: tokens and applies for each format's reference output, and its perturbations."""
    before, after = case["before"], case["after"]
    language = language_for(case.get("path") or case.get("language", ""))
    figures: dict[str, FormatFigures] = {}
    for fmt in formats:
        edit_format = get_format(fmt)
        output = edit_format.reference(before, after)
        entry = FormatFigures(tokens=count_tokens(output), chars=len(output),
                              applies=_outcome(fmt, before, after, output, language) == "exact")
        if edit_format.perturb is not None:
            entry.perturbed = [
                Perturbation(kind, outcome := _outcome(fmt, before, after, text, language), outcome == "exact",
                             grounding_allows(case, fmt, text))
                for kind, text in edit_format.perturb(output, case["id"], ot_trials)
            ]
        figures[fmt] = entry
    return CaseFigures(case["id"], case.get("language"), figures)


def _outcome(fmt: str, before: str, after: str, output: str, language: str | None) -> str:
    """How an output lands: "exact" (it gives `after`), "refused" (the applier said no, so the file stays as
    it was) or "wrong" (it applied, but not as intended: the silent failure that costs a user most)."""
    try:
        return "exact" if get_format(fmt).apply(before, output, language) == after else "wrong"
    except FormatError:
        return "refused"


def grounding_allows(case: dict, fmt: str, output: str) -> bool:
    """Whether grounded decoding lets a model write `output` (format `fmt`) for the case's file: the output in its
    fenced block (`evals.decode.fenced`), closed, read by the engine's grounding (`ReplyFollower`, what the engine
    asks of each token's text) a character at a time, without a tokenizer. Character by character, not all at
    once: the edit-script follower checks a count against the end of the file while it is being written, and the
    engine sees it so (Gemma writes a number a digit per token); a whole-text read would miss a count past the end.
    On the dev set's perturbations this gives the token-by-token answer. A refused output is one a grounded model
    could not have written."""
    from evals.decode import fenced
    from tools.grounding.reply import ReplyFollower

    reply = ReplyFollower(case["before"])
    return all(reply.read(char) for char in fenced(case, fmt, output)) and reply.block is None


def measure(
    cases: list[dict],
    formats: tuple[str, ...],
    count_tokens: Callable[[str], int],
    ot_trials: int = OT_TRIALS,
    progress: bool = True,
) -> Report:
    """The formats report: every case's figures per format, and their summary."""
    bar = Progress(len(cases), "formats", progress)
    results = []
    for case in cases:
        bar.step(case["id"])
        results.append(measure_case(case, formats, count_tokens, ot_trials))
    bar.close()
    return Report(results, Summary(summarize(results, formats) if results else {}))
