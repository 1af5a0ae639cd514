"""`agent eval` and `agent eval grounded`: the editing evals' command lines.

Run: `agent eval [--cases FILE | --from-git REPO] [--formats …] [--drafters …] [--limit N] [--quick]
[--json OUT [--resume]] [--plot OUT.png] [--model M --api-base URL]`. Without `--cases` or `--from-git` it
runs the built-in suite. A long decoding run rewrites OUT after each case; `--resume` continues it.
`agent eval grounded [--limit N] [--max-tokens N] [--json OUT]` is the grounded-decoding eval (`evals.grounded`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from decoding.engine.loading import DEFAULT_WEIGHTS, WEIGHT_FORMATS, WEIGHTS_HELP
from evals.cases import load_cases, load_suite, mine_git, one_per_language, shortest, stratify
from evals.progress import Progress
from evals.report import plot, render, write_report
from evals.run import OT_TRIALS, OT_TRIALS_QUICK, measure
from evals.schema import Report
from tools.command_line import parse_arguments
from tools.formats import format_names, get_format

QUICK_WORKLOADS = 1  # free-running workloads with --quick (copy-heavy, the shortest prompts)


QUICK_LANGUAGES = 2  # cases decoded with --quick: the first case of each of the first languages
# drafters timed with --quick: the MTP head pays only in bfloat16, and costs float32 decoding time on a CPU
QUICK_DRAFTERS = ("off", "ngram", "cursor", "hybrid")




FREE_RUNNING_TOKENS, QUICK_FREE_RUNNING_TOKENS = 128, 32  # new tokens per free-running generation
LIVE_MAX_TOKENS = 4096  # per live reply
MAX_DRAFT_TOKENS = 64  # --draft-tokens: more rows than any verify forward here would use
MODEL_FREE_DRAFTERS = ("off", "ngram", "cursor")  # drafters that never read the model (--forwards-only)


def quick_decode_formats() -> tuple[str, ...]:
    """The formats `--quick` decodes (`Format.quick`), whole files last: they are decoded on the shortest file only."""
    return tuple(sorted((name for name in format_names() if get_format(name).quick), key=lambda name: name == "whole"))

RETIRED = {  # options `agent eval` no longer has, and what took their place
    "--grounding": "the grounded-decoding eval is its own command: agent eval grounded [--limit N] "
                   "[--max-tokens N] [--json OUT]",
    "--max-tokens": "it had three meanings, each its own option: --free-running-tokens N (per free-running "
                    "generation; 0 skips them), --live-max-tokens N (per live reply), and agent eval grounded "
                    "--max-tokens N (per grounded block)",
}

DESCRIPTION = ("the editing evals: output tokens per edit format and whether each applies, decoding per drafter\n"
               "on the embedded model, the cost per applied edit, and live runs")
QUICK_HELP = (
    "a small run; it sets only what is not given otherwise: "
    f"--drafters {','.join(QUICK_DRAFTERS)}, --decode-formats {','.join(quick_decode_formats())}, "
    f"--free-running-tokens {QUICK_FREE_RUNNING_TOKENS}, decoding the first case of each of {QUICK_LANGUAGES} "
    "languages (unless --stratify) with whole files on the shortest (unless --whole-cases); and "
    f"{OT_TRIALS_QUICK} miscount perturbation per OT script instead of {OT_TRIALS}, {QUICK_WORKLOADS} copy-heavy "
    "free-running workload instead of all. The run prints the settings it uses"
)

EPILOG = """\
examples:
  agent eval --quick                          the built-in suite: tokens and applies per format, decoding on two
                                              edits with four drafters, the cost per applied edit; minutes
  agent eval --cases edits.jsonl --drafters none --json out.json
                                              formats only: tokens and appliers, no model; seconds
  agent eval --cases edits.jsonl --stratify 40 --decode-formats search-replace,udiff,ot --json out.json --resume
                                              the cost per applied edit, decoding 40 edits spread over languages
                                              and sizes; if it stops, run it again: --resume decodes the rest

The grounded-decoding eval is `agent eval grounded` (see its --help).
case files: JSONL, one {"id", "path", "language", "instruction", "before", "after"} per line.
exit codes: 0 measured, 2 usage error or unreadable cases/report, 4 live model server unreachable
"""

GROUNDED_EPILOG = """\
examples:
  agent eval grounded                         the 24 suite edits, grounding off and on; minutes on 2 cores
  agent eval grounded --limit 3 --json g.json the first 3, and every case's outcome as JSON

exit codes: 0 measured, 2 usage error
"""


class Retired(argparse.Action):
    """An option `agent eval` no longer has: giving it is a usage error that names what took its place."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string}: {RETIRED[option_string or '']}")


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    cases = parser.add_argument_group("cases")
    source = cases.add_mutually_exclusive_group()
    source.add_argument("--cases", type=Path, metavar="FILE", help="JSONL cases (default: the built-in suite)")
    source.add_argument("--from-git", type=Path, metavar="REPO",
                        help="mine cases from the history of this local git repository")
    cases.add_argument("--limit", type=int, metavar="N", help="use at most N cases")
    cases.add_argument("--save-cases", type=Path, metavar="FILE",
                       help="write the cases measured as JSONL (e.g. those mined with --from-git), to measure the "
                            "same edits again with --cases FILE")
    formats = parser.add_argument_group("formats: tokens and whether each output applies, on every case")
    formats.add_argument("--formats", type=lambda v: _names(v, format_names(), "format"), default=format_names(),
                         help=f"comma-separated formats (default: {','.join(format_names())})")
    decoding = parser.add_argument_group("decoding on the embedded model")
    decoding.add_argument("--drafters", default=None,
                          help="comma-separated drafters timed on the embedded model (off, ngram, … as the engine "
                               "has them), 'all', or 'none' for formats only (default: all; none with --model; "
                               f"{','.join(MODEL_FREE_DRAFTERS)} with --forwards-only)")
    decoding.add_argument("--decode-formats", type=lambda v: _names(v, format_names(), "format"), default=None,
                          help="formats whose reference output is decoded, reference-forced (default: every format "
                               "but whole, which costs one forward per token of the file)")
    decoding.add_argument("--stratify", type=int, metavar="N",
                          help="decode only N of the cases, spread over languages (in proportion) and file sizes, "
                               "the same N every time; tokens and applies are still measured on every case")
    decoding.add_argument("--whole-cases", type=int, metavar="M",
                          help="decode whole files on M of the decoded cases only (spread the same way; default: "
                               "all)")
    decoding.add_argument("--free-running-tokens", type=int, metavar="N",
                          help=f"new tokens per free-running generation (default: {FREE_RUNNING_TOKENS}; 0 skips "
                               "the free-running workloads)")
    decoding.add_argument("--forwards-only", action="store_true",
                          help="count the reference-forced target forwards without the model: under a reference "
                               f"the drafts of {', '.join(MODEL_FREE_DRAFTERS)} (so their forwards) do not depend "
                               "on it; minutes for all 180 dev edits (whole files take longest), no times, no "
                               "free-running workloads")
    decoding.add_argument("--draft-tokens", type=int, metavar="N",
                          help="every drafter drafts N tokens at every step, as vLLM's ngram does and as a GPU "
                               "affords (verifying N rows costs about one there); default: the engine's adaptive "
                               "length, which suits a CPU")
    decoding.add_argument("--weights", choices=WEIGHT_FORMATS, default=DEFAULT_WEIGHTS, help=WEIGHTS_HELP)
    live = parser.add_argument_group("live model: each case through the agent's edit turn")
    live.add_argument("--model", metavar="M",
                      help="a litellm model name, or 'embedded' to start the embedded server")
    live.add_argument("--api-base", metavar="URL", help="the live model's OpenAI-compatible endpoint")
    live.add_argument("--live-max-tokens", type=int, metavar="N",
                      help=f"new tokens per live reply (default: {LIVE_MAX_TOKENS})")
    live.add_argument("--timeout", type=float, default=600, metavar="SECONDS",
                      help="seconds per live reply (default: 600)")
    output = parser.add_argument_group("output (the tables go to stdout)")
    output.add_argument("--json", type=Path, metavar="OUT",
                        help="also write every per-case figure as JSON (rewritten after each case decoded)")
    output.add_argument("--resume", action="store_true",
                        help="with --json OUT: keep the reference-forced figures of the cases OUT already has "
                             "(same formats and drafters) and decode only the others")
    output.add_argument("--plot", type=Path, metavar="OUT.png",
                        help="also draw tokens per format as a PNG (and the speedup per drafter beside it, "
                             "OUT-speedup.png)")
    for option in RETIRED:
        parser.add_argument(option, action=Retired)


@dataclass(frozen=True)
class Settings:
    """What a run does once --quick and the defaults are applied, each field what one option (or --quick) sets."""

    drafters: tuple[str, ...]
    decode_formats: tuple[str, ...]
    stratify: int | None  # decode N cases spread over languages and sizes
    languages: int | None  # else decode the first case of each of this many languages (None: every case)
    whole_cases: int | None  # whole files on M of the decoded cases, spread the same way
    whole_shortest: bool  # else whole files on the shortest decoded case only (False: on every one)
    ot_trials: int
    free_running_tokens: int
    workloads: int | None  # the copy-heavy free-running workloads with the shortest prompts (None: all)

    def describe(self) -> str:
        """One line of what this run does, for stderr."""
        trials = f"{_counted(self.ot_trials, 'miscount perturbation')} per OT script"
        if not self.drafters:
            return f"agent eval: formats only, no decoding; {trials}"
        cases = (f"{self.stratify} cases spread over languages and sizes" if self.stratify else
                 f"the first case of each of {self.languages} languages" if self.languages else "every case")
        whole = (f", whole files on {self.whole_cases} of them" if self.whole_cases else
                 ", whole files on the shortest" if self.whole_shortest else "")
        workloads = _counted(self.workloads, "free-running workload") if self.workloads else "every workload"
        free = f"{workloads} up to {self.free_running_tokens} tokens" if self.free_running_tokens else (
            "no free-running workloads")
        return (f"agent eval: drafters {','.join(self.drafters)}; decoding {','.join(self.decode_formats)} on "
                f"{cases}{whole}; {trials}; {free}")


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def settings(args: argparse.Namespace) -> Settings:
    """The run's settings: an option given wins, then --quick's, then the defaults. Raises ArgumentTypeError for
    an unknown drafter."""
    quick = args.quick
    default = ",".join(MODEL_FREE_DRAFTERS) if args.forwards_only else "none" if args.model else (
        ",".join(QUICK_DRAFTERS) if quick else "all")
    free_running_tokens = args.free_running_tokens
    if free_running_tokens is None:
        free_running_tokens = QUICK_FREE_RUNNING_TOKENS if quick else FREE_RUNNING_TOKENS
    return Settings(
        drafters=_drafters(args.drafters or default),
        decode_formats=args.decode_formats or (quick_decode_formats() if quick else
                                               tuple(f for f in format_names() if f != "whole")),
        stratify=args.stratify,
        languages=QUICK_LANGUAGES if quick and not args.stratify else None,
        whole_cases=args.whole_cases,
        whole_shortest=quick and not args.whole_cases,
        ot_trials=OT_TRIALS_QUICK if quick else OT_TRIALS,
        free_running_tokens=0 if args.forwards_only else free_running_tokens,  # free-running output is the model's
        workloads=QUICK_WORKLOADS if quick else None,
    )


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


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options together, or None."""
    for option, value, least in (("--limit", args.limit, 1), ("--stratify", args.stratify, 1),
                                 ("--whole-cases", args.whole_cases, 1), ("--live-max-tokens", args.live_max_tokens, 1),
                                 ("--free-running-tokens", args.free_running_tokens, 0)):
        if value is not None and value < least:
            return f"{option} must be at least {least}, not {value}"
    if args.api_base and not args.model:
        return "--api-base needs --model (the model to ask at that endpoint)"
    if args.draft_tokens is not None and not 1 <= args.draft_tokens <= MAX_DRAFT_TOKENS:
        return f"--draft-tokens must be from 1 to {MAX_DRAFT_TOKENS}, not {args.draft_tokens}"
    if args.resume and not args.json:
        return "--resume needs --json OUT (the report to continue)"
    for option, out in (("--json", args.json), ("--plot", args.plot), ("--save-cases", args.save_cases)):
        if problem := output_problem(out):
            return f"{option}: {problem}"
    return None


def output_problem(out: Path | None) -> str | None:
    """Why a file cannot be written at `out` (a directory, or no directory to write it in), or None."""
    if out and out.is_dir():
        return f"{out} is a directory"
    if out and not out.parent.is_dir():
        return f"no directory {out.parent} to write {out.name} in"
    return None


def run_command(args: argparse.Namespace) -> int:
    if problem := usage_problem(args):
        print(f"agent eval: {problem}", file=sys.stderr)
        return 2
    try:
        chosen = settings(args)
    except argparse.ArgumentTypeError as exc:
        print(f"agent eval: --drafters: {exc}", file=sys.stderr)
        return 2
    drafters = chosen.drafters
    if args.forwards_only and not set(drafters) <= set(MODEL_FREE_DRAFTERS):
        print(f"agent eval: --forwards-only counts the drafters that do not read the model "
              f"({', '.join(MODEL_FREE_DRAFTERS)}), not {', '.join(sorted(set(drafters) - set(MODEL_FREE_DRAFTERS)))}",
              file=sys.stderr)
        return 2
    done = None
    if args.resume and drafters:  # an unreadable report is refused before any work
        from evals.resume import decoded_before

        try:
            from decoding.engine.weights import products

            here = None if args.forwards_only else products(args.weights)  # forwards alone: no product runs
            done = decoded_before(args.json, args.draft_tokens, args.weights, here)
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
        from agent.client import Model, ModelUnavailable

        try:
            Model(args.model, args.api_base).check_reachable()
        except ModelUnavailable as exc:
            print(f"agent eval: {exc}", file=sys.stderr)
            return 4
    from decoding.engine.tokenizer import gemma_token_counter

    print(chosen.describe(), file=sys.stderr)
    # every decoded format is measured too: its cost per applied edit needs its apply rate
    formats = tuple(f for f in format_names() if f in args.formats or (drafters and f in chosen.decode_formats))
    report = measure(cases, formats, gemma_token_counter(), chosen.ot_trials)
    if drafters:
        from decoding.engine.loading import load_model
        from evals.decode_run import run_decode

        decoded, whole = decoded_cases(cases, chosen)
        if not args.forwards_only:
            print("loading the embedded model …", file=sys.stderr)
        run_decode(report, decoded, None if args.forwards_only else load_model(), chosen.decode_formats, drafters,
                   chosen.free_running_tokens, chosen.workloads, done=done,
                   checkpoint=(lambda: write_report(report.to_json(), args.json)) if args.json else lambda: None,
                   whole_ids=whole, model_free=args.forwards_only, draft_tokens=args.draft_tokens,
                   weights=args.weights)
    if args.model:
        status = _live(report, cases, args)
        if status:
            return status
    print(render(report, f"Edit formats on {source}: minimal correct output, Gemma tokens"))
    if args.json:
        write_report(report.to_json(), args.json)
    if args.plot:
        plot(report, args.plot)
    return 0


def decoded_cases(cases: list[dict], chosen: Settings) -> tuple[list[dict], set[str] | None]:
    """The cases to decode (--stratify N, else one per language with --quick, else all) and the ids of those to
    decode whole files on (--whole-cases M of them, spread the same way; the shortest with --quick; None: all)."""
    if chosen.stratify:
        decoded = stratify(cases, chosen.stratify)
    else:
        decoded = one_per_language(cases, chosen.languages) if chosen.languages else cases
    if chosen.whole_cases:
        return decoded, {case["id"] for case in stratify(decoded, chosen.whole_cases)}
    return decoded, {case["id"] for case in shortest(decoded, 1)} if chosen.whole_shortest else None


def _live(report: Report, cases: list[dict], args: argparse.Namespace) -> int:
    """Run the live evals (starting the embedded server for --model embedded); 4 when the model is unreachable."""
    from agent.client import Model, ModelUnavailable
    from decoding.serving.launch import EmbeddedServer, EmbeddedServerError
    from evals.live import run_live

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
        run_live(report, cases, model, args.live_max_tokens or LIVE_MAX_TOKENS, args.timeout)
    except (ModelUnavailable, EmbeddedServerError) as exc:
        print(f"agent eval: {exc}", file=sys.stderr)
        return 4
    finally:
        if server is not None:
            server.stop()
    return 0


def parse(argv: Sequence[str] | None, prog: str = "agent eval") -> argparse.Namespace:
    """`agent eval`'s arguments; usage errors (a retired option among them) exit 2 as argparse does."""
    return parse_arguments(argv, prog, DESCRIPTION, add_arguments, EPILOG)


def main(argv: Sequence[str] | None = None, prog: str = "agent eval") -> int:
    return run_command(parse(argv, prog))


def add_grounded_arguments(parser: argparse.ArgumentParser) -> None:
    from evals.grounded import MAX_NEW_TOKENS

    parser.add_argument("--limit", type=int, metavar="N", help="the first N suite edits only (default: all 24)")
    parser.add_argument("--max-tokens", type=int, metavar="N",
                        help=f"new tokens per edit block the model writes (default: {MAX_NEW_TOKENS})")
    parser.add_argument("--weights", choices=WEIGHT_FORMATS, default=DEFAULT_WEIGHTS, help=WEIGHTS_HELP)
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the summary and every case's outcome")


def parse_grounded(argv: Sequence[str] | None, prog: str = "agent eval grounded") -> argparse.Namespace:
    description = ("the grounded-decoding eval: the embedded base model writes the built-in suite's edits few-shot,\n"
                   "grounding off and on; closed / parsed / applied / exact per mode")
    return parse_arguments(argv, prog, description, add_grounded_arguments, GROUNDED_EPILOG)


def grounded_main(argv: Sequence[str] | None = None, prog: str = "agent eval grounded") -> int:
    """`agent eval grounded`: the grounded-decoding eval (`evals.grounded`) on the built-in suite."""
    from dataclasses import asdict

    from decoding.engine.loading import load_model
    from evals.grounded import MAX_NEW_TOKENS, MODES, format_summary, run_grounded, snippets, summary

    args = parse_grounded(argv, prog)
    for option, value in (("--limit", args.limit), ("--max-tokens", args.max_tokens)):
        if value is not None and value < 1:
            print(f"{prog}: {option} must be at least 1, not {value}", file=sys.stderr)
            return 2
    if problem := output_problem(args.json):
        print(f"{prog}: --json: {problem}", file=sys.stderr)
        return 2
    cases = snippets()[: args.limit]
    print("loading the embedded model …", file=sys.stderr)
    loaded = load_model()
    bar = Progress(len(cases) * len(MODES), "grounded")
    results = run_grounded(loaded, cases, args.max_tokens or MAX_NEW_TOKENS,
                           before_case=lambda i, mode: bar.step(f"{cases[i].id} {mode}"), weights=args.weights)
    bar.close()
    table = summary(results)
    print(format_summary(table))
    if args.json:
        rows = {mode: [{"id": case.id, **asdict(o)} for case, o in zip(cases, outcomes, strict=True)]
                for mode, outcomes in results.items()}
        args.json.write_text(json.dumps({"summary": table, "cases": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
