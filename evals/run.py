"""Editing evals: output tokens per edit format, and whether each format's output applies.

For every case (a file before and after one edit) and every format (`evals.formats`), the eval takes the
minimal correct output, counts its tokens with the embedded Gemma tokenizer, applies it with that format's
own applier and checks the result is exactly `after`; then it applies model-like perturbations of it
(miscounted OT retains, trimmed whitespace, missing context lines) and checks again. These are the costs
of outputs a model would have to write, not of outputs a model wrote.

Run: `agent eval [--cases FILE | --from-git REPO] [--formats …] [--drafters none] [--limit N] [--quick]
[--json OUT] [--plot OUT.png]`. Without `--cases` or `--from-git` it runs the built-in suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from evals.cases import load_cases, load_suite, mine_git
from evals.formats import FORMATS, PERTURBABLE, FormatError, apply_output, perturbations, reference_output
from tools.syntax import language_for

DRAFTERS_AVAILABLE = ("none",)
OT_TRIALS, OT_TRIALS_QUICK = 3, 1  # miscounted-retain perturbations per OT script


def measure_case(case: dict, formats: tuple[str, ...], count_tokens: Callable[[str], int], ot_trials: int) -> dict:
    """One case's figures: tokens and applies for each format's reference output, and its perturbations."""
    before, after = case["before"], case["after"]
    language = language_for(case.get("path") or case.get("language", ""))
    figures: dict[str, dict] = {}
    for fmt in formats:
        output = reference_output(fmt, before, after)
        entry: dict = {
            "tokens": count_tokens(output),
            "chars": len(output),
            "applies": _outcome(fmt, before, after, output, language) == "exact",
        }
        if fmt in PERTURBABLE:
            entry["perturbed"] = [
                {"kind": kind, "outcome": (outcome := _outcome(fmt, before, after, text, language)),
                 "applies": outcome == "exact"}
                for kind, text in perturbations(fmt, output, seed=case["id"], trials=ot_trials)
            ]
        figures[fmt] = entry
    return {"id": case["id"], "language": case.get("language"), "formats": figures, "decode": {}}


def _outcome(fmt: str, before: str, after: str, output: str, language: str | None) -> str:
    """How an output lands: "exact" (it gives `after`), "refused" (the applier said no, so the file stays as
    it was) or "wrong" (it applied, but not as intended: the silent failure that costs a user most)."""
    try:
        return "exact" if apply_output(fmt, before, output, language) == after else "wrong"
    except FormatError:
        return "refused"


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
        if fmt in PERTURBABLE:
            trials = [p for r in results for p in r["formats"][fmt]["perturbed"]]
            by_kind: dict[str, Counter] = {}
            for trial in trials:
                by_kind.setdefault(trial["kind"], Counter())[trial["outcome"]] += 1
            part |= {
                "perturbed_trials": len(trials),
                "perturbed_applies": _share(trials, "exact"),
                "perturbed_wrong": _share(trials, "wrong"),
                "perturbed_by_kind": {
                    kind: {"trials": sum(c.values()), "applies": c["exact"] / sum(c.values()),
                           "wrong": c["wrong"] / sum(c.values())}
                    for kind, c in sorted(by_kind.items())
                },
            }
        summary[fmt] = part
    return summary


def _share(trials: list[dict], outcome: str) -> float | None:
    return sum(t["outcome"] == outcome for t in trials) / len(trials) if trials else None


def run(
    cases: list[dict],
    formats: tuple[str, ...],
    count_tokens: Callable[[str], int],
    ot_trials: int = OT_TRIALS,
    progress: bool = True,
) -> dict:
    """The full report: `{"cases": [per-case figures], "summary": {format: figures}}`."""
    results = []
    for number, case in enumerate(cases, 1):
        if progress:
            done = 30 * number // len(cases)
            print(f"\r  [{'#' * done}{'.' * (30 - done)}] {number}/{len(cases)} {case['id'][:60]:<60}",
                  end="", file=sys.stderr, flush=True)
        results.append(measure_case(case, formats, count_tokens, ot_trials))
    if progress:
        print(file=sys.stderr)
    return {"cases": results, "summary": summarize(results, formats) if results else {}}


def render(report: dict, title: str) -> str:
    """Markdown: tokens and apply rates per format, then apply rates per perturbation kind."""

    def number(value) -> str:
        return "n/a" if value is None else f"{value:,.0f}"

    def share(value) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    summary = report["summary"]
    lines = [title, "",
             "| format | tokens median | tokens p90 | saved vs whole median | saved p90 | saved % median "
             "| applies | perturbed: applies | perturbed: wrong | perturbed n |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for fmt, part in summary.items():
        lines.append(
            f"| {fmt} | {number(part['tokens_median'])} | {number(part['tokens_p90'])} "
            f"| {number(part.get('saved_median'))} | {number(part.get('saved_p90'))} "
            f"| {share(part.get('saved_share_median'))} | {share(part['applies'])} "
            f"| {share(part.get('perturbed_applies'))} | {share(part.get('perturbed_wrong'))} "
            f"| {part.get('perturbed_trials', 'n/a')} |"
        )
    kinds = [(fmt, kind, figures) for fmt, part in summary.items()
             for kind, figures in part.get("perturbed_by_kind", {}).items()]
    if kinds:
        lines += ["", "Each format has its own perturbations; \"wrong\" = applied somewhere other than intended "
                  "(the rest were refused).", "",
                  "| format | perturbation | applies | wrong | n |", "|---|---|---|---|---|"]
        lines += [f"| {fmt} | {kind} | {share(f['applies'])} | {share(f['wrong'])} | {f['trials']} |"
                  for fmt, kind, f in kinds]
    return "\n".join(lines)


def plot(report: dict, out: Path) -> None:
    """A PNG with the distribution of output tokens per format (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    formats = list(report["summary"])
    data = [[case["formats"][fmt]["tokens"] or 1 for case in report["cases"]] for fmt in formats]
    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.boxplot(data, tick_labels=formats, showfliers=True)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_ylabel("output tokens (Gemma tokenizer, log scale)")
    axes.set_title(f"Minimal correct output per edit format, {len(report['cases'])} edits")
    for x, fmt in enumerate(formats, 1):
        median = report["summary"][fmt]["tokens_median"]
        axes.annotate(f"{median:,.0f}", (x, median), xytext=(12, 0), textcoords="offset points", va="center")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def _names(value: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or value!r}; known: {', '.join(known)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--cases", type=Path, metavar="FILE", help="JSONL cases (default: the built-in suite)")
    source.add_argument("--from-git", type=Path, metavar="REPO",
                        help="mine cases from the history of this local git repository")
    parser.add_argument("--formats", type=lambda v: _names(v, FORMATS, "format"), default=FORMATS,
                        help=f"comma-separated formats (default: {','.join(FORMATS)})")
    parser.add_argument("--drafters", default="none",
                        help="comma-separated drafters for decoding evals; only 'none' (formats only) for now")
    parser.add_argument("--limit", type=int, help="use at most N cases")
    parser.add_argument("--quick", action="store_true",
                        help=f"{OT_TRIALS_QUICK} miscount perturbation per OT script instead of {OT_TRIALS}")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every per-case figure as JSON")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="also draw tokens per format as a PNG")


def run_command(args: argparse.Namespace) -> int:
    drafters = [name.strip() for name in args.drafters.split(",") if name.strip()]
    if any(name not in DRAFTERS_AVAILABLE for name in drafters):
        print(f"agent eval: --drafters {args.drafters}: decoding evals are not available in this build "
              "(they need the embedded engine); use --drafters none to measure formats only", file=sys.stderr)
        return 2
    if args.from_git:
        skipped: Counter = Counter()
        try:
            cases = mine_git(args.from_git, args.limit, skipped)
        except subprocess.CalledProcessError as exc:
            detail = exc.stderr.decode("utf-8", "replace").strip() if exc.stderr else str(exc)
            print(f"agent eval: cannot read the git history of {args.from_git}: {detail}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"agent eval: cannot run git on {args.from_git}: {exc}", file=sys.stderr)
            return 2
        reasons = ", ".join(f"{reason} {n}" for reason, n in skipped.most_common())
        print(f"mined {len(cases)} cases from {args.from_git} (skipped: {reasons or 'none'})", file=sys.stderr)
        source = f"{len(cases)} edits mined from {args.from_git}"
    elif args.cases:
        if not args.cases.exists():
            print(f"agent eval: no cases file at {args.cases}", file=sys.stderr)
            return 2
        cases = load_cases(args.cases, args.limit)
        source = f"{len(cases)} edits from {args.cases}"
    else:
        cases = load_suite(limit=args.limit)
        source = f"the built-in suite ({len(cases)} edits)"
    if not cases:
        print("agent eval: no cases to measure", file=sys.stderr)
        return 2
    from decoding.tokenizer import gemma_token_counter

    report = run(cases, args.formats, gemma_token_counter(), OT_TRIALS_QUICK if args.quick else OT_TRIALS)
    print(render(report, f"Edit formats on {source}: minimal correct output, Gemma tokens"))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    if args.plot:
        plot(report, args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent eval", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
