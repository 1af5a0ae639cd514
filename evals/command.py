"""`agent eval`: the editing evals' command line (cases, formats, drafters, --quick, --resume, live runs).

Run: `agent eval [--cases FILE | --from-git REPO] [--formats …] [--drafters …] [--limit N] [--quick]
[--json OUT [--resume]] [--plot OUT.png] [--model M --api-base URL]`. Without `--cases` or `--from-git` it
runs the built-in suite. A long decoding run rewrites OUT after each case; `--resume` continues it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from evals.cases import load_cases, load_suite, mine_git
from evals.progress import Progress
from evals.report import plot, render, write_report
from evals.run import (
    MAX_TOKENS,
    OT_TRIALS,
    OT_TRIALS_QUICK,
    QUICK_MAX_TOKENS,
    decoded_before,
    one_per_language,
    run,
    run_decode,
    run_live,
    shortest,
    stratify,
)
from tools.command_line import parse_arguments
from tools.formats import format_names, get_format

QUICK_WORKLOADS = 1  # free-running workloads with --quick (copy-heavy, the shortest prompts)


QUICK_LANGUAGES = 2  # cases decoded with --quick: the first case of each of the first languages
# drafters timed with --quick: the MTP head pays only in bfloat16, and costs float32 decoding time on a CPU
QUICK_DRAFTERS = ("off", "ngram", "cursor", "hybrid")


LIVE_MAX_TOKENS = 4096  # per live reply
MAX_DRAFT_TOKENS = 64  # --draft-tokens: more rows than any verify forward here would use
MODEL_FREE_DRAFTERS = ("off", "ngram", "cursor")  # drafters that never read the model (--forwards-only)


EPILOG = """\
examples:
  agent eval --quick                          built-in suite, every drafter, the cost table; minutes
  agent eval --cases edits.jsonl --drafters none --json out.json --plot out.png
                                              formats only: tokens and appliers, no model forward passes
  agent eval --from-git ~/src/project --limit 50 --drafters none
                                              the same on edits mined from your own history
  agent eval --cases edits.jsonl --decode-formats ot --json out.json
                                              decode the OT scripts: about 50 s per edit on 2 cores for the five
                                              drafters; if it stops, add --resume and run it again
  agent eval --cases edits.jsonl --stratify 40 --decode-formats search-replace,udiff,ot,whole --whole-cases 10
             --json out.json --resume       the cost per applied edit: tokens and applies on every edit, decoding
                                              on 40 spread over languages and sizes, whole files on 10 of them
  agent eval --cases evals/data/edits-dev.jsonl --forwards-only --decode-formats search-replace,udiff,ot
                                              the cost per applied edit's forwards on every dev edit, without the
                                              model (exact for off, ngram and cursor; no times); a few minutes
  agent eval --cases edits.jsonl --model hosted_vllm/gemma-4 --api-base http://127.0.0.1:8000/v1
                                              each edit through the agent's edit turn on a live server

case files: JSONL, one {"id", "path", "language", "instruction", "before", "after"} per line.

exit codes: 0 measured, 2 usage error or unreadable cases/report, 4 live model server unreachable
"""


def _names(value: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or value!r}; known: {', '.join(known)}")
    return names


def _quick_decode_formats() -> tuple[str, ...]:
    """The formats `--quick` decodes (`tools.formats.Format.quick`; whole only on the shortest file decoded)."""
    return tuple(name for name in format_names() if get_format(name).quick)


def _drafters(value: str) -> tuple[str, ...]:
    """The drafters named in --drafters: "none", "all" or a comma-separated list (checked against the engine's)."""
    from evals.decode import available_drafters

    if value.strip() == "none":
        return ()
    return available_drafters() if value.strip() == "all" else _names(value, available_drafters(), "drafter")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--cases", type=Path, metavar="FILE", help="JSONL cases (default: the built-in suite)")
    source.add_argument("--from-git", type=Path, metavar="REPO",
                        help="mine cases from the history of this local git repository")
    parser.add_argument("--formats", type=lambda v: _names(v, format_names(), "format"), default=format_names(),
                        help=f"comma-separated formats (default: {','.join(format_names())})")
    parser.add_argument("--drafters", default=None,
                        help="comma-separated drafters timed on the embedded model (off, ngram, … as the engine "
                             "has them), 'all', or 'none' for formats only (default: all; none with --model; "
                             f"{','.join(QUICK_DRAFTERS)} with --quick)")
    parser.add_argument("--decode-formats", type=lambda v: _names(v, format_names(), "format"), default=None,
                        help="formats whose reference output is decoded, reference-forced (default: every format "
                             "but whole, which costs one forward per token of the file; with --quick "
                             f"{','.join(_quick_decode_formats())}, whole on the shortest file only)")
    parser.add_argument("--stratify", type=int, metavar="N",
                        help="decode only N of the cases, spread over languages (in proportion) and file sizes, the "
                             "same N every time; tokens and applies are still measured on every case")
    parser.add_argument("--whole-cases", type=int, metavar="M",
                        help="decode whole files on M of the decoded cases only (spread the same way; default: all)")
    parser.add_argument("--limit", type=int, help="use at most N cases")
    parser.add_argument("--save-cases", type=Path, metavar="FILE",
                        help="write the cases measured as JSONL (e.g. those mined with --from-git), to measure the "
                             "same edits again with --cases FILE")
    parser.add_argument("--quick", action="store_true",
                        help=f"{OT_TRIALS_QUICK} miscount perturbation per OT script instead of {OT_TRIALS}; decode "
                             f"one case in each of {QUICK_LANGUAGES} languages (whole files only the shortest), and "
                             f"{QUICK_WORKLOADS} copy-heavy free-running workload of up to {QUICK_MAX_TOKENS} tokens")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help=f"new tokens per free-running generation (default: {MAX_TOKENS}; 0 skips them) and "
                             f"per live reply (default: {LIVE_MAX_TOKENS}) and per --grounding reply (default: 160)")
    parser.add_argument("--model", metavar="M",
                        help="also run every case through the agent's edit turn on this live model (a litellm "
                             "name, or 'embedded' to start the embedded server)")
    parser.add_argument("--api-base", metavar="URL", help="the live model's OpenAI-compatible endpoint")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per live reply (default: 600)")
    parser.add_argument("--forwards-only", action="store_true",
                        help="count the reference-forced target forwards without the model: under a reference the "
                             f"drafts of {', '.join(MODEL_FREE_DRAFTERS)} (so their forwards) do not depend on it; "
                             "minutes for all 180 dev edits (whole files take longest), no times, no free-running "
                             "workloads")
    parser.add_argument("--draft-tokens", type=int, metavar="N",
                        help="every drafter drafts N tokens at every step, as vLLM's ngram does and as a GPU affords "
                             "(verifying N rows costs about one there); default: the engine's adaptive length, which "
                             "suits a CPU")
    parser.add_argument("--grounding", action="store_true",
                        help="instead, the grounded-decoding eval: the embedded base model writes the built-in "
                             "suite's edits few-shot, grounding off and on; closed / parsed / applied / exact per "
                             "mode (about 15 minutes on 2 cores; --limit N for fewer)")
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
    if args.draft_tokens is not None and not 1 <= args.draft_tokens <= MAX_DRAFT_TOKENS:
        print(f"agent eval: --draft-tokens must be from 1 to {MAX_DRAFT_TOKENS}, not {args.draft_tokens}",
              file=sys.stderr)
        return 2
    for option, value in (("--stratify", args.stratify), ("--whole-cases", args.whole_cases)):
        if value is not None and value < 1:
            print(f"agent eval: {option} must be at least 1, not {value}", file=sys.stderr)
            return 2
    if args.resume and not args.json:
        print("agent eval: --resume needs --json OUT (the report to continue)", file=sys.stderr)
        return 2
    for option, out in (("--json", args.json), ("--plot", args.plot), ("--save-cases", args.save_cases)):
        if out and (out.is_dir() or not out.parent.is_dir()):
            problem = f"{out} is a directory" if out.is_dir() else f"no directory {out.parent} to write {out.name} in"
            print(f"agent eval: {option}: {problem}", file=sys.stderr)
            return 2
    if args.grounding:
        return _grounding(args)
    try:
        default = "none" if args.model else ",".join(QUICK_DRAFTERS) if args.quick else "all"
        default = ",".join(MODEL_FREE_DRAFTERS) if args.forwards_only else default
        drafters = _drafters(args.drafters or default)
    except argparse.ArgumentTypeError as exc:
        print(f"agent eval: --drafters: {exc}", file=sys.stderr)
        return 2
    if args.forwards_only and not set(drafters) <= set(MODEL_FREE_DRAFTERS):
        print(f"agent eval: --forwards-only counts the drafters that do not read the model "
              f"({', '.join(MODEL_FREE_DRAFTERS)}), not {', '.join(sorted(set(drafters) - set(MODEL_FREE_DRAFTERS)))}",
              file=sys.stderr)
        return 2
    decode_formats = args.decode_formats or (_quick_decode_formats() if args.quick else
                                             tuple(f for f in format_names() if f != "whole"))
    done = None
    if args.resume and drafters:  # an unreadable report is refused before any work
        try:
            done = decoded_before(args.json, args.draft_tokens)
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

    # every decoded format is measured too: its cost per applied edit needs its apply rate
    formats = tuple(f for f in format_names() if f in args.formats or (drafters and f in decode_formats))
    report = run(cases, formats, gemma_token_counter(), OT_TRIALS_QUICK if args.quick else OT_TRIALS)
    if drafters:
        from decoding.engine.loading import load_model

        max_tokens = args.max_tokens if args.max_tokens is not None else QUICK_MAX_TOKENS if args.quick else MAX_TOKENS
        max_tokens = 0 if args.forwards_only else max_tokens  # free-running output is the model's own
        decoded, whole = decoded_cases(cases, args)
        if not args.forwards_only:
            print("loading the embedded model …", file=sys.stderr)
        run_decode(report, decoded, None if args.forwards_only else load_model(), decode_formats, drafters, max_tokens,
                   QUICK_WORKLOADS if args.quick else None, done=done,
                   checkpoint=(lambda: write_report(report, args.json)) if args.json else lambda: None,
                   whole_ids=whole, model_free=args.forwards_only, draft_tokens=args.draft_tokens)
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


def decoded_cases(cases: list[dict], args: argparse.Namespace) -> tuple[list[dict], set[str] | None]:
    """The cases to decode (--stratify N, else one per language with --quick, else all) and the ids of those to
    decode whole files on (--whole-cases M of them, spread the same way; the shortest with --quick; None: all)."""
    if args.stratify:
        decoded = stratify(cases, args.stratify)
    else:
        decoded = one_per_language(cases, QUICK_LANGUAGES) if args.quick else cases
    if args.whole_cases:
        return decoded, {case["id"] for case in stratify(decoded, args.whole_cases)}
    return decoded, {case["id"] for case in shortest(decoded, 1)} if args.quick else None


def _grounding(args: argparse.Namespace) -> int:
    """The grounded-decoding eval (evals/grounded.py) on the built-in suite."""
    from dataclasses import asdict

    from decoding.engine.loading import load_model
    from evals.grounded import MAX_NEW_TOKENS, MODES, format_summary, run_grounded, snippets, summary

    cases = snippets()[: args.limit]
    print("loading the embedded model …", file=sys.stderr)
    loaded = load_model()
    bar = Progress(len(cases) * len(MODES), "grounded")
    results = run_grounded(loaded, cases, args.max_tokens or MAX_NEW_TOKENS,
                           before_case=lambda i, mode: bar.step(f"{cases[i].id} {mode}"))
    bar.close()
    table = summary(results)
    print(format_summary(table))
    if args.json:
        rows = {mode: [{"id": case.id, **asdict(o)} for case, o in zip(cases, outcomes, strict=True)]
                for mode, outcomes in results.items()}
        args.json.write_text(json.dumps({"summary": table, "cases": rows}, indent=1), encoding="utf-8")
    return 0


def _live(report: dict, cases: list[dict], args: argparse.Namespace) -> int:
    """Run the live evals (starting the embedded server for --model embedded); 4 when the model is unreachable."""
    from agent.client import Model, ModelUnavailable
    from decoding.serving.launch import EmbeddedServer, EmbeddedServerError

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


def main(argv: Sequence[str] | None = None, prog: str = "agent eval") -> int:
    return run_command(parse_arguments(argv, prog, __doc__.split("\n")[0], add_arguments, EPILOG))


if __name__ == "__main__":
    sys.exit(main())
