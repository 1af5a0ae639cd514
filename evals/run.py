"""Editing evals: output tokens per edit format, whether each format's output applies, and decoding speed.

For every case (a file before and after one edit) and every format (`evals.formats`), the eval takes the
minimal correct output, counts its tokens with the embedded Gemma tokenizer, applies it with that format's
own applier and checks the result is exactly `after`; then it applies model-like perturbations of it
(miscounted OT retains, trimmed whitespace, missing context lines) and checks again. These are the costs
of outputs a model would have to write, not of outputs a model wrote. Then, per drafter, the embedded
model's target forwards and decode time, reference-forced and free-running (`evals.decode`), and with
`--model` each case through the agent's edit turn on a live server (`evals.live`).

Run: `agent eval [--cases FILE | --from-git REPO] [--formats …] [--drafters …] [--limit N] [--quick]
[--json OUT [--resume]] [--plot OUT.png] [--model M --api-base URL]`. Without `--cases` or `--from-git` it
runs the built-in suite. A long decoding run rewrites OUT after each case; `--resume` continues it.
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
from evals.progress import Progress
from tools.syntax import language_for

OT_TRIALS, OT_TRIALS_QUICK = 3, 1  # miscounted-retain perturbations per OT script
MAX_TOKENS, QUICK_MAX_TOKENS = 128, 32  # new tokens per free-running generation
QUICK_WORKLOADS = 1  # free-running workloads with --quick (copy-heavy, the shortest prompts)
QUICK_LANGUAGES = 3  # cases decoded with --quick: the first case of each of the first languages
LIVE_MAX_TOKENS = 4096  # per live reply
EPILOG = """\
examples:
  agent eval --quick                          built-in suite, every drafter, about a minute on 2 cores
  agent eval --cases edits.jsonl --drafters none --json out.json --plot out.png
                                              formats only: tokens and appliers, no model forward passes
  agent eval --from-git ~/src/project --limit 50 --drafters none
                                              the same on edits mined from your own history
  agent eval --cases edits.jsonl --decode-formats ot --json out.json
                                              decode the OT scripts: about 50 s per edit on 2 cores for the five
                                              drafters; if it stops, add --resume and run it again
  agent eval --cases edits.jsonl --model hosted_vllm/gemma-4 --api-base http://127.0.0.1:8000/v1
                                              each edit through the agent's edit turn on a live server

case files: JSONL, one {"id", "path", "language", "instruction", "before", "after"} per line.

exit codes: 0 measured, 2 usage error or unreadable cases/report, 4 live model server unreachable
"""


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
    checkpoint: Callable[[], None] = lambda: None,
) -> None:
    """Add the decoding evals to `report`: reference-forced per case (`decode` of the decoded cases; the others
    keep an empty one), free-running on the standard workloads (only the `workloads` copy-heavy ones with the
    shortest prompts when given; none when `max_tokens` is 0), and their summaries. Cases in `done` (id → the
    figures of an earlier run) keep those figures; `checkpoint()` runs after each case decoded."""
    from decoding.lab.workloads import standard_workloads
    from evals.decode import Decoder, decode_case, free_running, summarize_forced, summarize_free

    decoder = Decoder(loaded)
    done = done or {}
    by_id = {case["id"]: case for case in report["cases"]}
    workloads = standard_workloads() if workloads is None else copy_heavy(standard_workloads())[:workloads]
    workloads = workloads if max_tokens else []
    todo = [case for case in cases if case["id"] not in done]
    bar = Progress(len(todo) * len(decode_formats) * len(drafters) + len(workloads) * len(drafters), "decoding",
                   progress)
    for case in cases:
        if case["id"] in done:
            by_id[case["id"]]["decode"] = done[case["id"]]
            continue
        by_id[case["id"]]["decode"] = decode_case(decoder, case, decode_formats, drafters, bar.step)
        checkpoint()
    free = free_running(decoder, drafters, max_tokens, workloads, bar.step)
    bar.close()
    report["free_running"] = free
    report["summary"]["decode"] = {
        "cases": len(cases),
        "formats": list(decode_formats),
        "drafters": list(drafters),
        "reference_forced": summarize_forced(report["cases"], decode_formats, drafters),
        "free_running": summarize_free(free),
        "max_tokens": max_tokens,
    }


def decoded_before(path: Path, formats: tuple[str, ...], drafters: tuple[str, ...]) -> dict[str, dict]:
    """The reference-forced figures in an earlier JSON report that cover every format and drafter asked for,
    by case id; none when there is no report yet. Raises ValueError for a file that is not such a report."""
    from evals.decode import drafter_totals

    if not path.exists():
        return {}
    try:
        cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
        return {
            case["id"]: {drafter: drafter_totals({fmt: case["decode"][drafter]["formats"][fmt] for fmt in formats})
                         for drafter in drafters}
            for case in cases
            if case.get("decode") and all(fmt in case["decode"].get(drafter, {}).get("formats", {})
                                          for drafter in drafters for fmt in formats)
        }
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a JSON report of agent eval ({type(exc).__name__}: {exc})") from exc


def write_report(report: dict, path: Path) -> None:
    """Write the JSON report all at once, so an interrupted run leaves the last complete one."""
    from tools.edit_file import atomic_write

    atomic_write(path, json.dumps(report, indent=2, ensure_ascii=False).encode("utf-8"))


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


def _number(value) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _times(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def render(report: dict, title: str) -> str:
    """Markdown: tokens and apply rates per format, apply rates per perturbation kind, then the decoding and live
    tables when they were measured."""
    summary = report["summary"]["formats"]
    lines = [title, "",
             "| format | tokens median | tokens p90 | saved vs whole median | saved p90 | saved % median "
             "| applies | perturbed: applies | perturbed: wrong | perturbed n |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for fmt, part in summary.items():
        lines.append(
            f"| {fmt} | {_number(part['tokens_median'])} | {_number(part['tokens_p90'])} "
            f"| {_number(part.get('saved_median'))} | {_number(part.get('saved_p90'))} "
            f"| {_percent(part.get('saved_share_median'))} | {_percent(part['applies'])} "
            f"| {_percent(part.get('perturbed_applies'))} | {_percent(part.get('perturbed_wrong'))} "
            f"| {part.get('perturbed_trials', 'n/a')} |"
        )
    kinds = [(fmt, kind, figures) for fmt, part in summary.items()
             for kind, figures in part.get("perturbed_by_kind", {}).items()]
    if kinds:
        lines += ["", "Each format has its own perturbations; \"wrong\" = applied somewhere other than intended "
                  "(the rest were refused).", "",
                  "| format | perturbation | applies | wrong | n |", "|---|---|---|---|---|"]
        lines += [f"| {fmt} | {kind} | {_percent(f['applies'])} | {_percent(f['wrong'])} | {f['trials']} |"
                  for fmt, kind, f in kinds]
    if "decode" in report["summary"]:
        lines += ["", *render_decode(report["summary"]["decode"])]
    if "live" in report["summary"]:
        lines += ["", *render_live(report["summary"]["live"])]
    return "\n".join(lines)


SAME_AS_OFF = {True: "yes", False: "NO", None: "n/a (no off)"}


def render_decode(decode: dict) -> list[str]:
    """The reference-forced and free-running tables, side by side in one report."""
    head = ("| {what} | drafter | tokens | target forwards | tokens / forward | forwards: off ÷ this "
            "| decode s | speedup vs off | speedup median |")
    rule = "|---|---|---|---|---|---|---|---|---|"

    def rows(name: str, per_drafter: dict) -> list[str]:
        return [f"| {name} | {drafter} | {_number(t['tokens'])} | {_number(t['target_forwards'])} "
                f"| {t['tokens_per_forward']:.2f} | {_times(t.get('forwards_vs_off'))} | {t['seconds']:.1f} "
                f"| {_times(t.get('speedup_vs_off'))} | {_times(t.get('speedup_vs_off_median'))} |"
                for drafter, t in per_drafter.items()]

    lines = [f"Decoding, reference-forced on {decode['cases']} edits: the embedded Gemma 3 270M verifies each "
             "format's minimal correct output as if it wrote it. This estimates the speedup for a model that "
             "writes this output; it is not the 270M's own output.", "", head.format(what="format"), rule]
    for fmt, per_drafter in decode["reference_forced"].items():
        lines += rows(fmt, per_drafter)
    if decode["free_running"]:
        lines += ["", f"Decoding, free-running: the model's own greedy output on the standard workloads (up to "
                  f"{decode['max_tokens']} tokens): real acceptance, decode time after the prompt.", "",
                  head.format(what="workload").replace("| speedup median |", "| same output as off |"), rule]
    for name, per_drafter in decode["free_running"].items():
        lines += [row.rsplit("|", 2)[0] + f"| {SAME_AS_OFF[per_drafter[drafter]['same_as_off']]} |"
                  for row, drafter in zip(rows(name, per_drafter), per_drafter, strict=True)]
    lines += ["", "Target forwards include the prompt's; decode seconds run from the first token to the last "
              "(the prompt is prefilled once per case and shared). Speedup = off's decode time ÷ this drafter's."]
    return lines


def render_live(live: dict) -> list[str]:
    acceptance = live["acceptance"]
    return [f"Live model {live['model']} at {live['api_base'] or 'its default endpoint'}: {live['cases']} edits "
            "through the agent's edit turn", "",
            "| exact file | edit applied | syntax valid | errors | output tokens median | seconds median "
            "| drafted | accepted | acceptance |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {_percent(live['exact'])} | {_percent(live['applied'])} | {_percent(live['syntax_valid'])} "
            f"| {live['errors']} | {_number(live['output_tokens_median'])} | {live['seconds_median']:.1f} "
            f"| {_number(live['drafted'])} | {_number(live['accepted'])} | {_percent(acceptance)} |"]


def plot(report: dict, out: Path) -> list[Path]:
    """PNGs: the distribution of output tokens per format (log scale) at `out`, and, when decoding was
    measured, the speedup per drafter at `<out stem>-speedup.png`. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    summary = report["summary"]["formats"]
    formats = list(summary)
    data = [[case["formats"][fmt]["tokens"] or 1 for case in report["cases"]] for fmt in formats]
    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.boxplot(data, tick_labels=formats, showfliers=True)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_ylabel("output tokens (Gemma tokenizer, log scale)")
    axes.set_title(f"Minimal correct output per edit format, {len(report['cases'])} edits")
    for x, fmt in enumerate(formats, 1):
        median = summary[fmt]["tokens_median"]
        axes.annotate(f"{median:,.0f}", (x, median), xytext=(12, 0), textcoords="offset points", va="center")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    written = [out]
    if "decode" in report["summary"]:
        written.append(out.with_name(f"{out.stem}-speedup.png"))
        plot_speedup(report["summary"]["decode"], written[-1])
    return written


def plot_speedup(decode: dict, out: Path) -> None:
    """Grouped bars: speedup vs no drafting per drafter (decode time; the dot marks the ratio of forwards), for
    each reference-forced format and each free-running workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(f"{fmt}\n(forced)", per) for fmt, per in decode["reference_forced"].items()]
    groups += [(f"{name}\n(free)", per) for name, per in decode["free_running"].items()]
    drafters = [d for d in decode["drafters"] if d != "off"]
    figure, axes = plt.subplots(figsize=(max(8.0, 1.3 * len(groups) + 2), 4.8))
    width = 0.8 / max(len(drafters), 1)
    for i, drafter in enumerate(drafters):
        xs = [g + (i - (len(drafters) - 1) / 2) * width for g in range(len(groups))]
        speed = [per[drafter].get("speedup_vs_off") or 0 for _, per in groups]
        forwards = [per[drafter].get("forwards_vs_off") or 0 for _, per in groups]
        bars = axes.bar(xs, speed, width, label=f"{drafter}: decode time")
        axes.scatter(xs, forwards, color=bars.patches[0].get_facecolor(), edgecolor="black", zorder=3, s=24)
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_xticks(range(len(groups)), [name for name, _ in groups], fontsize=8)
    axes.set_ylabel("speedup vs no drafting (×)")
    axes.set_title(f"Speedup per drafter; forced = estimate for a model writing that output "
                   f"({decode['cases']} edits)\ndots: target forwards, off ÷ drafter", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def _names(value: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or value!r}; known: {', '.join(known)}")
    return names


def _drafters(value: str) -> tuple[str, ...]:
    """The drafters named in --drafters: "none", "all" or a comma-separated list (checked against the engine's)."""
    from evals.decode import available_drafters

    if value.strip() == "none":
        return ()
    return available_drafters() if value.strip() == "all" else _names(value, available_drafters(), "drafter")


def one_per_language(cases: list[dict], languages: int) -> list[dict]:
    """The first case of each of the first `languages` languages: a small spread for --quick decoding."""
    seen: dict[str, dict] = {}
    for case in cases:
        if len(seen) < languages:
            seen.setdefault(case.get("language") or "", case)
    return list(seen.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--cases", type=Path, metavar="FILE", help="JSONL cases (default: the built-in suite)")
    source.add_argument("--from-git", type=Path, metavar="REPO",
                        help="mine cases from the history of this local git repository")
    parser.add_argument("--formats", type=lambda v: _names(v, FORMATS, "format"), default=FORMATS,
                        help=f"comma-separated formats (default: {','.join(FORMATS)})")
    parser.add_argument("--drafters", default=None,
                        help="comma-separated drafters timed on the embedded model (off, ngram, … as the engine "
                             "has them), 'all', or 'none' for formats only (default: all; none with --model)")
    parser.add_argument("--decode-formats", type=lambda v: _names(v, FORMATS, "format"), default=None,
                        help="formats whose reference output is decoded, reference-forced (default: every format "
                             "but whole, which costs one forward per token of the file; ot with --quick)")
    parser.add_argument("--limit", type=int, help="use at most N cases")
    parser.add_argument("--save-cases", type=Path, metavar="FILE",
                        help="write the cases measured as JSONL (e.g. those mined with --from-git), to measure the "
                             "same edits again with --cases FILE")
    parser.add_argument("--quick", action="store_true",
                        help=f"{OT_TRIALS_QUICK} miscount perturbation per OT script instead of {OT_TRIALS}; decode "
                             f"one case in each of {QUICK_LANGUAGES} languages, the ot format only, and "
                             f"{QUICK_WORKLOADS} copy-heavy free-running workload of up to {QUICK_MAX_TOKENS} tokens")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help=f"new tokens per free-running generation (default: {MAX_TOKENS}; 0 skips them) and "
                             f"per live reply (default: {LIVE_MAX_TOKENS})")
    parser.add_argument("--model", metavar="M",
                        help="also run every case through the agent's edit turn on this live model (a litellm "
                             "name, or 'embedded' to start the embedded server)")
    parser.add_argument("--api-base", metavar="URL", help="the live model's OpenAI-compatible endpoint")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per live reply (default: 600)")
    parser.add_argument("--json", type=Path, metavar="OUT",
                        help="also write every per-case figure as JSON (rewritten after each case decoded)")
    parser.add_argument("--resume", action="store_true",
                        help="with --json OUT: keep the reference-forced figures of the cases OUT already has "
                             "(same formats and drafters) and decode only the others")
    parser.add_argument("--plot", type=Path, metavar="OUT.png",
                        help="also draw tokens per format as a PNG (and the speedup per drafter beside it, "
                             "OUT-speedup.png)")


def _load_cases(args: argparse.Namespace) -> tuple[list[dict], str] | None:
    if args.from_git:
        skipped: Counter = Counter()
        try:
            cases = mine_git(args.from_git, args.limit, skipped, progress=True)
        except subprocess.CalledProcessError as exc:
            detail = exc.stderr.decode("utf-8", "replace").strip() if exc.stderr else str(exc)
            print(f"agent eval: cannot read the git history of {args.from_git}: {detail}", file=sys.stderr)
            return None
        except OSError as exc:
            print(f"agent eval: cannot run git on {args.from_git}: {exc}", file=sys.stderr)
            return None
        reasons = ", ".join(f"{reason} {n}" for reason, n in skipped.most_common())
        print(f"mined {len(cases)} cases from {args.from_git} (skipped: {reasons or 'none'})", file=sys.stderr)
        return cases, f"{len(cases)} edits mined from {args.from_git}"
    if args.cases:
        if not args.cases.exists():
            print(f"agent eval: no cases file at {args.cases}", file=sys.stderr)
            return None
        try:
            cases = load_cases(args.cases, args.limit)
        except ValueError as exc:
            print(f"agent eval: {exc}", file=sys.stderr)
            return None
        return cases, f"{len(cases)} edits from {args.cases}"
    cases = load_suite(limit=args.limit)
    return cases, f"the built-in suite ({len(cases)} edits)"


def run_command(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        print(f"agent eval: --limit must be at least 1, not {args.limit}", file=sys.stderr)
        return 2
    if args.max_tokens is not None and args.max_tokens < 0:
        print(f"agent eval: --max-tokens must be 0 or more, not {args.max_tokens}", file=sys.stderr)
        return 2
    if args.api_base and not args.model:
        print("agent eval: --api-base needs --model (the model to ask at that endpoint)", file=sys.stderr)
        return 2
    if args.resume and not args.json:
        print("agent eval: --resume needs --json OUT (the report to continue)", file=sys.stderr)
        return 2
    for option, out in (("--json", args.json), ("--plot", args.plot), ("--save-cases", args.save_cases)):
        if out and (out.is_dir() or not out.parent.is_dir()):
            problem = f"{out} is a directory" if out.is_dir() else f"no directory {out.parent} to write {out.name} in"
            print(f"agent eval: {option}: {problem}", file=sys.stderr)
            return 2
    try:
        drafters = _drafters(args.drafters or ("none" if args.model else "all"))
    except argparse.ArgumentTypeError as exc:
        print(f"agent eval: --drafters: {exc}", file=sys.stderr)
        return 2
    decode_formats = args.decode_formats or (("ot",) if args.quick else tuple(f for f in FORMATS if f != "whole"))
    done = {}
    if args.resume and drafters:  # an unreadable report is refused before any work
        try:
            done = decoded_before(args.json, decode_formats, drafters)
        except ValueError as exc:
            print(f"agent eval: --resume: {exc}", file=sys.stderr)
            return 2
    loaded_cases = _load_cases(args)
    if loaded_cases is None:
        return 2
    cases, source = loaded_cases
    if not cases:
        print("agent eval: no cases to measure", file=sys.stderr)
        return 2
    if args.save_cases:
        rows = (json.dumps(case, ensure_ascii=False) + "\n" for case in cases)
        args.save_cases.write_text("".join(rows), encoding="utf-8")
    if args.model and drafters and args.api_base:  # fail now, not after hours of decoding
        from agent.model import Model, ModelUnavailable

        try:
            Model(args.model, args.api_base).check_reachable()
        except ModelUnavailable as exc:
            print(f"agent eval: {exc}", file=sys.stderr)
            return 4
    from decoding.engine.tokenizer import gemma_token_counter

    report = run(cases, args.formats, gemma_token_counter(), OT_TRIALS_QUICK if args.quick else OT_TRIALS)
    if drafters:
        from decoding.engine.loading import load_model

        max_tokens = args.max_tokens if args.max_tokens is not None else QUICK_MAX_TOKENS if args.quick else MAX_TOKENS
        decoded = one_per_language(cases, QUICK_LANGUAGES) if args.quick else cases
        if args.resume:
            kept = sum(case["id"] in done for case in decoded)
            print(f"resuming {args.json}: {kept} of {len(decoded)} cases decoded already", file=sys.stderr)
        print("loading the embedded model …", file=sys.stderr)
        run_decode(report, decoded, load_model(), decode_formats, drafters, max_tokens,
                   QUICK_WORKLOADS if args.quick else None, done=done,
                   checkpoint=(lambda: write_report(report, args.json)) if args.json else lambda: None)
    if args.model:
        status = _live(report, cases, args)
        if status:
            return status
    print(render(report, f"Edit formats on {source}: minimal correct output, Gemma tokens"))
    if args.json:
        write_report(report, args.json)
    if args.plot:
        plot(report, args.plot)
    return 0


def _live(report: dict, cases: list[dict], args: argparse.Namespace) -> int:
    """Run the live evals (starting the embedded server for --model embedded); 4 when the model is unreachable."""
    from agent.embedded import EmbeddedServer, EmbeddedServerError
    from agent.model import Model, ModelUnavailable

    server = None
    try:
        name, api_base = args.model, args.api_base
        if name == "embedded" and not api_base:
            print("starting the embedded model server …", file=sys.stderr)
            server = EmbeddedServer()
            server.start()
            name, api_base = f"openai/{server.model_id}", server.api_base
        model = Model(name, api_base)
        model.check_reachable()
        run_live(report, cases, model, args.max_tokens or LIVE_MAX_TOKENS, args.timeout)
    except (ModelUnavailable, EmbeddedServerError) as exc:
        print(f"agent eval: {exc}", file=sys.stderr)
        return 4
    finally:
        if server is not None:
            server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent eval", description=__doc__.split("\n")[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
