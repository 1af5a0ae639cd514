"""Editing evals, the measurements: output tokens per edit format, whether each format's output applies, and
decoding speed.

For every case (a file before and after one edit) and every format (`tools.formats`), the eval takes the
minimal correct output, counts its tokens with the embedded Gemma tokenizer, applies it with that format's
own applier and checks the result is exactly `after`; then it applies model-like perturbations of it
(miscounted OT retains, trimmed whitespace, missing context lines) and checks again, and notes which of them
grounded decoding (`decoding.engine.grounding`) would still let a model write: the grounded apply rate is over
those alone. These are the costs of outputs a model would have to write, not of outputs a model wrote. Then, per
drafter, the embedded model's target forwards and decode time, reference-forced and free-running
(`evals.decode`), and with `--model` each case through the agent's edit turn on a live server (`evals.live`). The
command is `evals.command`; tables, plots and the JSON report are `evals.report`.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from evals.progress import Progress
from tools.formats import FormatError, get_format
from tools.syntax import language_for

OT_TRIALS, OT_TRIALS_QUICK = 3, 1  # miscounted-retain perturbations per OT script


MAX_TOKENS, QUICK_MAX_TOKENS = 128, 32  # new tokens per free-running generation


def measure_case(case: dict, formats: tuple[str, ...], count_tokens: Callable[[str], int], ot_trials: int) -> dict:
    """One case's figures: tokens and applies for each format's reference output, and its perturbations."""
    before, after = case["before"], case["after"]
    language = language_for(case.get("path") or case.get("language", ""))
    figures: dict[str, dict] = {}
    for fmt in formats:
        edit_format = get_format(fmt)
        output = edit_format.reference(before, after)
        entry: dict = {
            "tokens": count_tokens(output),
            "chars": len(output),
            "applies": _outcome(fmt, before, after, output, language) == "exact",
        }
        if edit_format.perturb is not None:
            entry["perturbed"] = [
                {"kind": kind, "outcome": (outcome := _outcome(fmt, before, after, text, language)),
                 "applies": outcome == "exact", "grounded": grounding_allows(case, fmt, text)}
                for kind, text in edit_format.perturb(output, case["id"], ot_trials)
            ]
        figures[fmt] = entry
    return {"id": case["id"], "language": case.get("language"), "formats": figures, "decode": {}}


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
    from decoding.engine.grounding import ReplyFollower
    from evals.decode import fenced

    reply = ReplyFollower(case["before"])
    return all(reply.read(char) for char in fenced(case, fmt, output)) and reply.block is None


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100), interpolating between the nearest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(results: list[dict], formats: tuple[str, ...]) -> dict:
    """Per format: tokens (median, p90), tokens saved vs the whole file (median, p90, median %), apply rates."""
    summary: dict[str, dict] = {}
    for fmt in formats:
        tokens = [r["formats"][fmt]["tokens"] for r in results]
        part: dict = {
            "cases": len(results),
            "tokens_median": statistics.median(tokens),
            "tokens_p90": percentile(tokens, 90),
            "applies": sum(r["formats"][fmt]["applies"] for r in results) / len(results),
        }
        if "whole" in formats:
            whole = [r["formats"]["whole"]["tokens"] for r in results]
            saved = [w - t for w, t in zip(whole, tokens, strict=True)]
            saved_share = [s / w for s, w in zip(saved, whole, strict=True) if w]
            part |= {
                "saved_median": statistics.median(saved),
                "saved_p90": percentile(saved, 90),
                "saved_share_median": statistics.median(saved_share) if saved_share else None,
            }
        if get_format(fmt).perturb is not None:
            trials = [p for r in results for p in r["formats"][fmt]["perturbed"]]
            by_kind: dict[str, Counter] = {}
            grounded: Counter = Counter()
            for trial in trials:
                by_kind.setdefault(trial["kind"], Counter())[trial["outcome"]] += 1
                grounded[trial["kind"]] += bool(trial.get("grounded"))
            known = _grounding_known(trials)
            part |= {
                "perturbed_trials": len(trials),
                "perturbed_applies": _share(trials, "exact"),
                "perturbed_wrong": _share(trials, "wrong"),
                "perturbed_by_kind": {
                    kind: {"trials": sum(c.values()), "applies": c["exact"] / sum(c.values()),
                           "wrong": c["wrong"] / sum(c.values())}
                    | ({"grounded": grounded[kind] / sum(c.values())} if known else {})
                    for kind, c in sorted(by_kind.items())
                },
                **grounded_figures(trials, part["applies"]),
            }
        summary[fmt] = part
    return summary


def grounded_figures(trials: list[dict], clean: float) -> dict:
    """`grounded_trials`, the perturbations grounded decoding would let a model write, and `grounded_applies`, the
    share of them that apply: the apply rate of a grounded model's mistakes. Where grounding refuses every one (or
    there is none) it is the clean rate `clean`: a grounded model cannot make those mistakes. Nothing for trials
    measured before grounding was (no `grounded` in them): unknown, so the cost takes the perturbed rate for it."""
    if not _grounding_known(trials):
        return {}
    allowed = [trial for trial in trials if trial["grounded"]]
    return {"grounded_trials": len(allowed), "grounded_applies": _share(allowed, "exact") if allowed else clean}


def _grounding_known(trials: list[dict]) -> bool:
    """Whether the trials say whether grounding allows them (a report written before it was measured does not)."""
    return all("grounded" in trial for trial in trials)


def _share(trials: list[dict], outcome: str) -> float | None:
    return sum(t["outcome"] == outcome for t in trials) / len(trials) if trials else None


def run(
    cases: list[dict],
    formats: tuple[str, ...],
    count_tokens: Callable[[str], int],
    ot_trials: int = OT_TRIALS,
    progress: bool = True,
) -> dict:
    """The formats report: `{"cases": [per-case figures], "summary": {"formats": {format: figures}}}`."""
    bar = Progress(len(cases), "formats", progress)
    results = []
    for case in cases:
        bar.step(case["id"])
        results.append(measure_case(case, formats, count_tokens, ot_trials))
    bar.close()
    return {"cases": results, "summary": {"formats": summarize(results, formats) if results else {}}}


def run_decode(
    report: dict, cases: list[dict], loaded, decode_formats: tuple[str, ...], drafters: tuple[str, ...],
    max_tokens: int, workloads: int | None = None, progress: bool = True, done: dict[str, dict] | None = None,
    checkpoint: Callable[[], None] = lambda: None, whole_ids: set[str] | None = None, model_free: bool = False,
    draft_tokens: int | None = None,
) -> None:
    """Add the decoding evals to `report`: reference-forced per case (`decode` of the decoded cases; the others
    keep an empty one), free-running on the standard workloads (only the `workloads` copy-heavy ones with the
    shortest prompts when given; none when `max_tokens` is 0), their summaries and the cost per applied edit.
    `whole` is decoded only on the cases in `whole_ids` (all when None): it costs a forward per token of the file.
    `model_free`: only count the forwards, without the model (`Decoder.model_free`; `loaded` is not used).
    `draft_tokens`: every drafter drafts this many tokens at every step (None: the engine's adaptive length); the
    report records it, and `decoded_before` keeps figures only from a report decoded the same way.
    Cases whose `decode` in `done` (id → an earlier run's) covers their formats and every drafter keep those
    figures; `checkpoint()` runs after each case decoded."""
    from decoding.lab.workloads import standard_workloads
    from evals.cost import summarize_cost
    from evals.decode import Decoder, decode_case, free_running, summarize_forced, summarize_free

    decoder = Decoder.model_free() if model_free else Decoder(loaded)
    decoder.draft_tokens = report["draft_tokens"] = draft_tokens
    by_id = {case["id"]: case for case in report["cases"]}
    workloads = standard_workloads() if workloads is None else copy_heavy(standard_workloads())[:workloads]
    workloads = workloads if max_tokens else []
    plans = []
    for case in cases:
        formats = case_formats(decode_formats, whole_ids is None or case["id"] in whole_ids)
        plans.append((case, formats, reusable((done or {}).get(case["id"]), formats, drafters)))
    if done is not None and progress:
        kept = sum(earlier is not None for _, _, earlier in plans)
        print(f"resuming: {kept} of {len(cases)} cases decoded already", file=sys.stderr)
    units = sum(len(formats) for _, formats, earlier in plans if earlier is None) * len(drafters)
    bar = Progress(units + len(workloads) * len(drafters), "decoding", progress)
    for case, formats, earlier in plans:
        figures = earlier or decode_case(decoder, case, formats, drafters, bar.step)
        by_id[case["id"]]["decode"] = with_applies(figures, by_id[case["id"]]["formats"])
        if earlier is None:
            checkpoint()
    free = free_running(decoder, drafters, max_tokens, workloads, bar.step)
    bar.close()
    report["free_running"] = free
    report["summary"]["decode"] = {
        "cases": len(cases),
        "formats": list(decode_formats),
        "drafters": list(drafters),
        "whole_cases": len(cases) if whole_ids is None else len(whole_ids),
        "reference_forced": summarize_forced(report["cases"], decode_formats, drafters),
        "free_running": summarize_free(free),
        "max_tokens": max_tokens,
    }
    report["summary"]["cost"] = summarize_cost(report["cases"], report["summary"]["formats"], drafters)


def case_formats(decode_formats: tuple[str, ...], whole: bool) -> tuple[str, ...]:
    """The formats one case is decoded in: `whole` only where asked, being the long one."""
    return decode_formats if whole else tuple(fmt for fmt in decode_formats if fmt != "whole")


def with_applies(decode: dict, formats: dict) -> dict:
    """A case's decode figures with, per drafter and format, whether that format's output applies on this case:
    `applies` (the minimal output), `applies_perturbed` (the share of its perturbations that apply; None for a
    format without any) and `applies_grounded` (the share of those grounded decoding allows that apply, the clean
    outcome where it allows none; None for a format without perturbations), so each row of the JSON holds every
    figure of the cost per applied edit."""
    for per_drafter in decode.values():
        for fmt, figures in per_drafter["formats"].items():
            trials = formats.get(fmt, {}).get("perturbed")
            figures["applies"] = formats[fmt]["applies"] if fmt in formats else None
            figures["applies_perturbed"] = sum(t["applies"] for t in trials) / len(trials) if trials else None
            figures["applies_grounded"] = _grounded_share(trials, figures["applies"])
    return decode


def _grounded_share(trials: list[dict] | None, applies: bool | None) -> float | None:
    """One case's share of the perturbations grounding allows that apply; whether its minimal output applies where
    grounding allows none; None without perturbations, or where grounding was not measured."""
    if not trials or not _grounding_known(trials):
        return None
    allowed = [trial for trial in trials if trial["grounded"]]
    return sum(trial["applies"] for trial in allowed) / len(allowed) if allowed else float(bool(applies))


def decoded_before(path: Path, draft_tokens: int | None = None) -> dict[str, dict]:
    """The reference-forced figures of an earlier JSON report, by case id (cases never decoded left out); none
    when there is no report yet. Raises ValueError for a file that is not such a report, or one decoded with
    another draft length (`run_decode`'s `draft_tokens`): its forwards would not compare."""
    if not path.exists():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        decoded = {case["id"]: case["decode"] for case in report["cases"] if case.get("decode")}
        earlier = report.get("draft_tokens")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a JSON report of agent eval ({type(exc).__name__}: {exc})") from exc
    if decoded and earlier != draft_tokens:
        def spelled(n: int | None) -> str:
            return "adaptive draft lengths" if n is None else f"--draft-tokens {n}"
        raise ValueError(f"{path} was decoded with {spelled(earlier)}, not {spelled(draft_tokens)}: resume it the "
                         "same way, or write a new report")
    return decoded


def reusable(earlier: dict | None, formats: tuple[str, ...], drafters: tuple[str, ...]) -> dict | None:
    """An earlier run's figures of one case cut down to `formats` and `drafters`, with their sums; None unless it
    has them all (then the case is decoded again)."""
    from evals.decode import drafter_totals

    try:
        return {drafter: drafter_totals({fmt: earlier[drafter]["formats"][fmt] for fmt in formats})
                for drafter in drafters}
    except (KeyError, TypeError):
        return None


def copy_heavy(workloads: list) -> list:
    """The workloads with source text to copy from, shortest prompt first."""
    return sorted((w for w in workloads if w.prediction), key=lambda w: len(w.prompt))


def run_live(report: dict, cases: list[dict], model, max_tokens: int, timeout: float, progress: bool = True) -> None:
    """Add each case's live figures (`live`) and their summary to `report`."""
    from evals import live

    by_id = {case["id"]: case for case in report["cases"]}
    bar = Progress(len(cases), "live", progress)
    figures = []
    for case in cases:
        bar.step(case["id"])
        figures.append(live.run_case(case, model, max_tokens, timeout))
        by_id[case["id"]]["live"] = figures[-1]
    bar.close()
    report["summary"]["live"] = {"model": model.name, "api_base": model.api_base} | live.summarize(figures)


def one_per_language(cases: list[dict], languages: int) -> list[dict]:
    """The first case of each of the first `languages` languages: a small spread for --quick decoding."""
    seen: dict[str, dict] = {}
    for case in cases:
        if len(seen) < languages:
            seen.setdefault(case.get("language") or "", case)
    return list(seen.values())


def stratify(cases: list[dict], n: int) -> list[dict]:
    """`n` of the cases spread over languages and file sizes, the same every time: each language gets a share in
    proportion to its cases (at least one while `n` allows; the most common languages first when it does not),
    and within a language the picks are evenly spaced along the files ordered by size. In the input order."""
    if n >= len(cases):
        return list(cases)
    groups: dict[str, list[dict]] = {}
    for case in cases:
        groups.setdefault(case.get("language") or "", []).append(case)
    chosen = set()
    for language, quota in _quotas({language: len(group) for language, group in groups.items()}, n).items():
        ordered = sorted(groups[language], key=lambda case: (len(case["before"]), case["id"]))
        chosen |= {ordered[int((i + 0.5) * len(ordered) / quota)]["id"] for i in range(quota)}
    return [case for case in cases if case["id"] in chosen]


def _quotas(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Picks per group, in proportion to the groups' sizes with one each (Sainte-Laguë: each further pick to the
    group with the most cases per pick); with fewer picks than groups, one each for the `n` largest."""
    order = sorted(sizes, key=lambda group: (-sizes[group], group))
    quotas = {group: 1 for group in order[:n]}
    while sum(quotas.values()) < n:
        group = max((g for g in order if quotas[g] < sizes[g]), key=lambda g: sizes[g] / (quotas[g] + 0.5))
        quotas[group] += 1
    return quotas


def shortest(cases: list[dict], n: int) -> list[dict]:
    """The `n` cases with the shortest files (whole-file decoding costs a forward per token of the file)."""
    return sorted(cases, key=lambda case: (len(case["before"]), case["id"]))[:n]
