"""How well the tolerant applier lands scripts on real edits, exact and miscounted.

For every case (a real commit: file before and after), the benchmark
1. applies the exact script from `ot_diff` and checks it gives `after`;
2. perturbs, one at a time, each count-only retain that comes right before a quoted op by ±1..3 code
   points and checks the edit still lands exactly;
3. does the same before each count-only insert of whole lines, where landing means `after` exactly or
   `after` up to blank lines, and the only other allowed outcome is a refusal (never a misplaced edit);
4. feeds malformed scripts through the file-level API and checks each is refused with the file unchanged;
5. times `apply` of a 50-operation script on a 5,000-line file.

Run: `agent bench apply [--cases FILE] [--limit N] [--json OUT]`.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from evals.cases import DEFAULT_CASES, load_cases
from evals.progress import Progress
from evals.report import write_report
from tools.command_line import parse_arguments
from tools.edits import apply_script_to_file
from tools.formats.ot import MISCOUNTS
from tools.ot import Op, OTError, Retain, format_script, is_line_insert, is_quoted, ot_diff
from tools.patch import apply_edit, without_blank_lines
from tools.syntax import language_for


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, outcome: str, example: str) -> None:
        self.outcomes[outcome] += 1
        self.examples.setdefault(outcome, [])
        if len(self.examples[outcome]) < 5:
            self.examples[outcome].append(example)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def rate(self, *outcomes: str) -> float:
        return sum(self.outcomes[o] for o in outcomes) / self.total if self.total else float("nan")


def _perturbed(ops: list[Op], kind) -> Iterator[tuple[int, int, list[Op]]]:
    """(op index, delta, script) for each count-only retain followed by an op matching `kind`."""
    for i in range(len(ops) - 1):
        if isinstance(ops[i], Retain) and ops[i].text is None and kind(ops[i + 1]):
            for delta in MISCOUNTS:
                if ops[i].n + delta >= 0:
                    yield i, delta, [*ops[:i], Retain(ops[i].n + delta), *ops[i + 1:]]


def _outcome(before: str, after: str, script: list[Op], language: str | None, blank_ok: bool) -> str:
    try:
        got = apply_edit(before, script, language).after
    except OTError:
        return "refused"
    if got == after:
        return "exact"
    if blank_ok and without_blank_lines(got) == without_blank_lines(after):
        return "blank-lines"
    return "misplaced"


MALFORMATIONS = {
    "truncated inside a string": lambda s: s[: s.index('"') + 3] if '"' in s else s + '\ninsert("ab',
    "missing closing parenthesis": lambda s: s.replace(")", "", 1),
    "unknown operation": lambda s: "replace(3)\n" + s,
    "negative count": lambda s: "retain(-4)\n" + s,
    "insert with a count": lambda s: "insert(7)\n" + s,
    "bad escape": lambda s: s + '\ninsert("\\q")',
    "delete past the end": lambda s: s + "\nretain(99999999)\ndelete(5)",
    "quoted text absent": lambda s: 'delete("\\u2603 not in this file \\u2603")\n' + s,
}


def run(cases: list[dict], progress: bool = True) -> dict:
    exact, quoted, line_insert, malformed = Tally(), Tally(), Tally(), Tally()
    rng = random.Random(0)
    bar = Progress(len(cases), "cases", progress)
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            bar.step(case["id"])
            before, after = case["before"], case["after"]
            language = language_for(case.get("path") or case.get("language", ""))
            ops = ot_diff(before, after)
            exact.add(_outcome(before, after, ops, language, blank_ok=False), case["id"])
            for i, delta, script in _perturbed(ops, is_quoted):
                quoted.add(_outcome(before, after, script, language, blank_ok=False), f"{case['id']} op {i} {delta:+d}")
            for i, delta, script in _perturbed(ops, is_line_insert):
                line_insert.add(
                    _outcome(before, after, script, language, blank_ok=True), f"{case['id']} op {i} {delta:+d}"
                )
            path = Path(tmp) / Path(case["path"]).name
            path.write_text(before, encoding="utf-8", newline="")
            original = path.read_bytes()
            name, corrupt = rng.choice(sorted(MALFORMATIONS.items()))
            try:
                apply_script_to_file(path, corrupt(format_script(ops)), journal=False)
                outcome = "applied"
            except OTError:
                outcome = "refused, unchanged" if path.read_bytes() == original else "refused, FILE CHANGED"
            malformed.add(outcome, f"{case['id']} ({name})")
    bar.close()
    return {
        "cases": len(cases),
        "exact": _summary(exact),
        "perturbed_before_quoted": _summary(quoted),
        "perturbed_before_line_insert": _summary(line_insert),
        "malformed": _summary(malformed),
        "large_file": time_large_file(),
    }


def _summary(tally: Tally) -> dict:
    return {"total": tally.total, "outcomes": dict(tally.outcomes), "examples": tally.examples}


def time_large_file(lines: int = 5000, edits: int = 50) -> dict:
    """Seconds to resolve and syntax-check a 50-op script on a generated 5,000-line Python file."""
    rng = random.Random(1)
    body = [f"def function_{i}(value):\n    return value * {i} + {rng.randint(0, 99)}\n\n" for i in range(lines // 3)]
    before = "".join(body)
    after_parts = list(body)
    for i in sorted(rng.sample(range(len(body)), edits // 2)):
        after_parts[i] = after_parts[i].replace("return value", "return -value").replace("\n\n", "\n    # edited\n\n")
    after = "".join(after_parts)
    script = ot_diff(before, after)
    start = time.perf_counter()
    result = apply_edit(before, script, language_for("big.py"))
    seconds = time.perf_counter() - start
    assert result.after == after
    return {"lines": before.count("\n"), "ops": len(script), "seconds": round(seconds, 4)}


def render(report: dict) -> str:
    def pct(part: dict, *names: str) -> str:
        total = part["total"]
        return f"{100 * sum(part['outcomes'].get(n, 0) for n in names) / total:.1f}%" if total else "n/a"

    rows = [
        ("exact ot_diff scripts land exactly", report["exact"], ("exact",)),
        ("retain ±1..3 before a quoted op: land exactly", report["perturbed_before_quoted"], ("exact",)),
        ("retain ±1..3 before a whole-line insert: land", report["perturbed_before_line_insert"],
         ("exact", "blank-lines")),
        ("malformed scripts refused, file unchanged", report["malformed"], ("refused, unchanged",)),
    ]
    lines = [f"Applier benchmark on {report['cases']} cases", "",
             "| measure | rate | n | outcomes |", "|---|---|---|---|"]
    for title, part, good in rows:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(part["outcomes"].items()))
        lines.append(f"| {title} | {pct(part, *good)} | {part['total']} | {outcomes} |")
    big = report["large_file"]
    lines += ["", f"apply on a {big['lines']}-line file with {big['ops']} ops: {big['seconds']:.3f} s"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "agent bench apply") -> int:
    return run_command(parse_arguments(argv, prog, __doc__.split("\n")[0], add_arguments))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=cases_file, default=str(DEFAULT_CASES), metavar="FILE",
                        help="JSONL cases with before/after (default: %(default)s)")
    parser.add_argument("--limit", type=int, help="use only the first N cases")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the full report as JSON")


def cases_file(text: str) -> list[dict]:
    """`--cases`: the cases a JSONL file holds (else a usage error that names the file, or the line, at fault)."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no cases file at {text}; pass --cases FILE (JSONL with before/after)")
    try:
        return load_cases(Path(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_command(args: argparse.Namespace) -> int:
    report = run(args.cases[: args.limit])
    print(render(report))
    if args.json:
        write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
