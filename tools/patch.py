"""Tolerant, tree-sitter-aware application of edit scripts.

Models miscount. This module turns the script a model wrote into an exact op list for the document
(`tools.ot`), landing the edit the model meant or refusing with a message the model can act on:

- a quoted `delete("…")` / `retain("…")` is the truth: when the count before it is off (or there is none), the
  quoted text is found near the cursor, else once after the last edit (exact, then fuzzy), and the cursor shifts;
  each shift is reported as a Correction. Consecutive quotes are looked for together first (the longest run of
  them the file has), so a short quote is placed by the quotes that follow it;
- an insert right after a quoted delete goes where the deleted text was (the two are a replacement); an insert
  before a quoted op goes where that op's text is;
- an insert of whole lines lands on a line boundary, and an inline insert does not split a word when a
  nearby boundary makes the file parse;
- where two places fit equally well, the file's syntax decides; if it cannot, the edit is refused;
- the result must not add ERROR or MISSING nodes to the file's syntax tree (unless allowed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from tools.ot import (
    SNAP_RADIUS,
    Delete,
    Insert,
    Op,
    OTError,
    Retain,
    apply,
    format_op,
    is_line_insert,
    is_quoted,
    line_boundaries_near,
    quoted_runs,
)
from tools.syntax import SyntaxProblem, added_problems, language_name, syntax_problems

QUOTE_RADIUS = 32  # code points around the cursor searched first for quoted text
FUZZY_MIN_LENGTH = 8  # shorter quotes are matched exactly or not at all
MAX_CANDIDATES = 8  # nearest candidate positions tried for one op
MAX_TRIALS = 64  # whole-script resolutions tried while choosing between candidate positions
TIME_BUDGET = 5.0  # seconds spent placing one script at most (checked between whole-script trials)


class EditRefused(OTError):
    """The script cannot be placed on the document without guessing (exit code 3 in the CLI)."""

    def __init__(self, message: str, op_index: int | None = None) -> None:
        super().__init__(message)
        self.op_index = op_index


class _TooManyTrials(Exception):
    """Choosing between candidate positions needed more whole-script trials than MAX_TRIALS, or more time."""


class SyntaxRefused(OTError):
    """The edit would add syntax errors to the file (exit code 4 in the CLI)."""

    def __init__(self, message: str, problems: list[SyntaxProblem], after: str) -> None:
        super().__init__(message)
        self.problems = problems
        self.after = after


@dataclass(frozen=True)
class Correction:
    """One place where the applier moved an op away from where the script's counts put it."""

    op_index: int
    kind: str  # "anchor", "fuzzy-anchor", "line-boundary", "word-boundary", "end-of-file"
    expected: int  # offset the counts gave
    found: int  # offset used
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PlacedEdit:
    """A script placed on a text in memory by the tolerant applier: the exact ops it became and the text after."""

    before: str
    after: str
    ops: list[Op]  # exact ops against `before`, quoted deletes
    corrections: list[Correction] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def apply_edit(
    before: str,
    script: Sequence[Op],
    language: str | None,
    *,
    allow_broken: bool = False,
    deadline: float | None = None,
) -> PlacedEdit:
    """Place `script` on `before` and return the result; raises EditRefused or SyntaxRefused.

    Placing gives up (EditRefused) after TIME_BUDGET seconds, or at `deadline` (time.monotonic()) if sooner."""
    budget_end = time.monotonic() + TIME_BUDGET
    resolver = _Resolver(before, list(script), language, min(budget_end, deadline or budget_end))
    try:
        ops, corrections = resolver.resolve({})
    except _TooManyTrials:
        raise EditRefused(
            "the script has too many ambiguous positions to check them all in time; anchor its edits with quoted "
            'retain("…") or delete("…") text'
        ) from None
    after = apply(before, ops)
    notes = syntax_notes(after, language, resolver.added_problems, allow_broken)
    return PlacedEdit(before, after, ops, corrections, notes)


def syntax_notes(
    after: str, language: str | None, added: Callable[[str], list[SyntaxProblem]], allow_broken: bool = False
) -> list[str]:
    """The notes on an edit's result `after` (`added(after)`: the syntax problems it adds to the file); raises
    SyntaxRefused where it adds any, unless `allow_broken`. Every format's edit goes through this check."""
    if language is None:
        return ["no grammar for this file type: applied without a syntax check"]
    problems = added(after)
    if problems and not allow_broken:
        details = "\n".join(p.describe(after) for p in problems[:3])
        raise SyntaxRefused(
            f"refused: the edit would add {len(problems)} syntax error(s) to this {language_name(language)} file; "
            f"the file is unchanged.\n{details}",
            problems,
            after,
        )
    return [f"applied with {len(problems)} new syntax error(s) (allowed by the caller)"] if problems else []


def place(doc: str, ops: Sequence[Op]) -> tuple[int, int]:
    """(cursor, done) after placing `ops` on `doc` as `apply_edit` does, syntax aside: where the script's next op
    starts from, and the offset before which nothing more can be placed. For following a script as it is written;
    raises EditRefused where `apply_edit` would."""
    resolver = _Resolver(doc, list(ops), None, time.monotonic() + TIME_BUDGET)
    try:
        resolver.resolve({})
    except _TooManyTrials:
        raise EditRefused("the script has too many ambiguous positions to check them all in time") from None
    return resolver.cursor, resolver.done


def where(doc: str, offset: int) -> str:
    """`line L, column C` (1-based, code points) of an offset."""
    offset = min(offset, len(doc))
    line = doc.count("\n", 0, offset) + 1
    return f"line {line}, column {offset - (doc.rfind(chr(10), 0, offset) + 1) + 1}"


def _show(text: str, limit: int = 60) -> str:
    return json.dumps(text if len(text) <= limit else text[:limit] + "…", ensure_ascii=False)


def _short(op: Op) -> str:
    spelled = format_op(op)
    return spelled if len(spelled) <= 70 else spelled[:67] + "…)"


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _splits_word(doc: str, offset: int) -> bool:
    return 0 < offset < len(doc) and _is_word(doc[offset - 1]) and _is_word(doc[offset])


Pins = dict[int, "int | tuple[int, int]"]  # op index -> an insert's offset, or a quoted op's (start, end)


def _replaces_deleted(ops: Sequence[Op], index: int) -> bool:
    """Whether the insert at `index` comes right after a quoted delete, so that the cursor is exactly where the
    deleted text was; a quoted op after the insert then places itself, not the insert."""
    previous = ops[index - 1] if index else None
    return isinstance(previous, Delete) and previous.text is not None


def _pinned_offset(forced: Pins, index: int) -> int | None:
    pin = forced.get(index)
    assert pin is None or isinstance(pin, int)  # inserts are pinned by offset
    return pin


def _pinned_span(forced: Pins, index: int) -> tuple[int, int] | None:
    pin = forced.get(index)
    assert pin is None or isinstance(pin, tuple)  # quoted ops are pinned by span
    return pin


class _Resolver:
    """Resolves a script against one document; `resolve(forced)` may be re-run with positions pinned."""

    def __init__(self, doc: str, ops: list[Op], language: str | None, deadline: float) -> None:
        self.doc = doc
        self.ops = ops
        self.language = language
        self.deadline = deadline  # time.monotonic() after which no more trials are run
        self.trials = 0
        self.trial_depth = 0  # >0 while trying a candidate: nested choices take the nearest
        self._base_problems: list[SyntaxProblem] | None = None
        self.cursor = self.done = 0

    def added_problems(self, after: str) -> list[SyntaxProblem]:
        if self.language is None:
            return []
        if self._base_problems is None:
            self._base_problems = syntax_problems(self.doc, self.language)
        return added_problems(self._base_problems, syntax_problems(after, self.language))

    def resolve(self, forced: Pins) -> tuple[list[Op], list[Correction]]:
        """Exact ops for the whole script; `forced` pins op index -> document offset."""
        doc = self.doc
        out: list[Op] = []
        corrections: list[Correction] = []
        done = 0  # document offset up to which exact ops have been emitted
        pos = 0  # where the script's counts put the cursor
        anchored = True  # pos is known exactly: start of file, or right after a quoted op
        for index, op in enumerate(self.ops):
            if isinstance(op, Retain) and op.text is None:
                pos += op.n
                anchored = anchored and op.n == 0
                continue
            if isinstance(op, Insert):
                following = self.ops[index + 1] if index + 1 < len(self.ops) else None
                at = _pinned_offset(forced, index)
                if at is None and _replaces_deleted(self.ops, index):
                    at = pos  # delete("a") insert("b") is a replacement too: b goes where a was
                elif at is None and is_quoted(following):
                    # insert + quoted op is a replacement: the quoted text places both
                    pinned = _pinned_span(forced, index + 1)
                    span = pinned or self._place_quoted(index + 1, following, pos, done, forced)
                    forced = forced | {index + 1: span}
                    if span[0] != pos or doc[span[0] : span[1]] != following.text:
                        corrections.append(self._correction(index + 1, following, pos, *span))
                    pos = at = span[0]
                elif at is None:
                    replaces = isinstance(following, Delete)
                    at = pos if anchored or replaces else self._place_insert(index, op, pos, done, forced)
                if at < done:
                    raise EditRefused(f"op {index} {_short(op)} would land before the previous edit", index)
                if at > len(doc):
                    raise EditRefused(
                        f"op {index} {_short(op)}: the counts before it reach offset {pos}, past the end of the "
                        f"file ({len(doc)} code points); fix the retain count or anchor with retain(\"…\")",
                        index,
                    )
                if at != pos:
                    corrections.append(self._correction(index, op, pos, at))
                out += [Retain(at - done), op]
                done = pos = at
                continue
            if op.text is None:  # count-only delete
                if pos + op.n > len(doc):
                    raise EditRefused(
                        f"op {index} {_short(op)} at {where(doc, pos)} runs past the end of the file "
                        f"({max(len(doc) - pos, 0)} code points left)",
                        index,
                    )
                out += [Retain(pos - done), Delete(op.n, doc[pos : pos + op.n])]
                done = pos = pos + op.n
                continue
            start, end = _pinned_span(forced, index) or self._place_quoted(index, op, pos, done, forced)
            if start < done:
                raise EditRefused(f"op {index} {_short(op)} would land before the previous edit", index)
            if start != pos or doc[start:end] != op.text:
                corrections.append(self._correction(index, op, pos, start, end))
            if isinstance(op, Delete):
                out += [Retain(start - done), Delete(end - start, doc[start:end])]
                done = end
            pos, anchored = end, True
        self.cursor, self.done = pos, done  # where the script leaves off (the outermost resolution sets them last)
        return out, corrections

    # -- quoted ops ------------------------------------------------------------------------------

    def _place_quoted(self, index: int, op: Retain | Delete, pos: int, done: int, forced: Pins) -> tuple[int, int]:
        doc, text = self.doc, op.text
        assert text is not None  # only quoted ops are placed by their text
        where_found, found = quote_candidates(doc, quoted_runs(self.ops, index), pos, done)
        if where_found == "cursor":
            return pos, pos + len(text)
        if where_found == "near":
            starts = self._choose(index, pos, found, forced, lambda s: (s, s + len(text)))
            return starts, starts + len(text)
        anywhere = found
        if len(anywhere) == 1:
            return anywhere[0], anywhere[0] + len(text)
        if anywhere:
            lines = ", ".join(str(doc.count("\n", 0, s) + 1) for s in anywhere[:8])
            raise EditRefused(
                f"op {index} {_short(op)}: the quoted text is not at {where(doc, pos)} nor within "
                f"{QUOTE_RADIUS} code points of it, and it occurs {len(anywhere)} times further on (lines {lines}); "
                f"fix the retain count before it, or quote more text so it is unique",
                index,
            )
        fuzzy = _fuzzy_find(doc, text, pos, done)
        if fuzzy is not None:
            return fuzzy
        raise EditRefused(
            f"op {index} {_short(op)}: the quoted text is not in the file after {where(doc, done)}. "
            f"At {where(doc, pos)} the file has {_show(doc[pos : pos + max(len(text), 20)])}; "
            f"quote the file's text exactly (same whitespace and escapes)",
            index,
        )

    # -- inserts ---------------------------------------------------------------------------------

    def _place_insert(self, index: int, op: Insert, pos: int, done: int, forced: Pins) -> int:
        """Where an insert after a count-only retain belongs: whole lines on a line boundary, words whole."""
        doc, text = self.doc, op.text
        if not is_line_insert(op):
            return self._place_inline(index, op, pos, done, forced)
        candidates = line_boundaries_near(doc, pos, text, floor=done)
        if not candidates or candidates == [pos]:
            return pos
        fits = lambda q: _indent_fits(doc, q, text)  # noqa: E731
        return self._choose(index, pos, candidates, forced, lambda q: q, kind="line boundaries", fits=fits, lines=True)

    def _place_inline(self, index: int, op: Insert, pos: int, done: int, forced: Pins) -> int:
        doc = self.doc
        if self.language is None or not _splits_word(doc, pos):
            return pos
        if self.trial_depth or self._clean(forced | {index: pos}):
            return pos
        lo, hi = max(done, pos - SNAP_RADIUS), min(len(doc), pos + SNAP_RADIUS)
        boundaries = sorted((q for q in range(lo, hi + 1) if not _splits_word(doc, q)), key=lambda q: abs(q - pos))
        clean = [q for q in boundaries if self._clean(forced | {index: q})]
        if clean and (len(clean) == 1 or abs(clean[0] - pos) < abs(clean[1] - pos)):
            return clean[0]
        return pos

    def _clean(self, forced: Pins) -> bool:
        trial = self._trial(forced)
        return trial is not None and not trial[1]

    # -- choosing between candidates ------------------------------------------------------------

    def _choose(
        self,
        index: int,
        pos: int,
        candidates: list[int],
        forced: Pins,
        span,
        kind: str = "matches",
        fits=None,
        lines: bool = False,
    ) -> int:
        """Pick among candidate offsets for op `index` by trying the whole script at each.

        The best candidate gives a file that parses, `fits` (for lines: indented like its neighbours) and
        needs the fewest other corrections (the script's remaining counts agree with it); then the nearest
        wins. Candidates giving the same file are one. Two different files equally good and equally near
        are refused as ambiguous; for inserted `lines`, any two equally good boundaries are (files that
        differ only in blank lines count as the same), since a count-only line insert has no text to check.
        """
        fits = fits or (lambda c: True)
        candidates = sorted(candidates, key=lambda c: (abs(c - pos), c))[:MAX_CANDIDATES]
        if len(candidates) == 1 or self.trial_depth:
            return candidates[0]
        if candidates[0] == pos and fits(pos) and self._clean(forced | {index: span(pos)}):
            return pos  # where the counts put it is valid: trust them
        tried = {c: self._trial(forced | {index: span(c)}) for c in candidates}
        trials = {c: trial for c, trial in tried.items() if trial is not None}
        viable = [c for c in candidates if c in trials]
        if not viable:
            return candidates[0]  # every choice fails later; let the nearest report its own error
        rank = {c: (trials[c][1], not fits(c), trials[c][2]) for c in viable}
        best = min(rank.values())
        best_candidates = [c for c in viable if rank[c] == best]
        nearest = abs(best_candidates[0] - pos)
        same = without_blank_lines if lines else str
        tied = {same(trials[c][0]): c for c in reversed(best_candidates) if lines or abs(c - pos) == nearest}
        if len(tied) == 1:
            return best_candidates[0]
        op = self.ops[index]
        spots = " and ".join(where(self.doc, c) for c in sorted(tied.values())[:3])
        raise EditRefused(
            f"op {index} {_short(op)} is ambiguous: the counts put it at {where(self.doc, pos)}, and the "
            f"{kind} at {spots} fit equally well and give different valid files. Anchor it with a quoted "
            f'retain("…") of the text just before it',
            index,
        )

    def _trial(self, forced: Pins) -> tuple[str, bool, int] | None:
        """(resulting text, adds syntax errors, corrections) for the script with `forced` pinned; None
        when it does not resolve."""
        self.trials += 1
        if self.trials > MAX_TRIALS or time.monotonic() > self.deadline:
            raise _TooManyTrials
        self.trial_depth += 1
        try:
            ops, corrections = self.resolve(forced)
        except EditRefused:
            return None
        finally:
            self.trial_depth -= 1
        after = apply(self.doc, ops)
        return after, bool(self.added_problems(after)), len(corrections)

    def _correction(self, index: int, op: Op, expected: int, found: int, end: int | None = None) -> Correction:
        doc = self.doc
        text = None if end is None else doc[found:end]
        if text is not None and text != getattr(op, "text", None):
            kind, why = "fuzzy-anchor", f"the file has {_show(text)} there, not the quoted text"
        elif text is not None:
            kind, why = "anchor", "the quoted text is there"
        elif found == len(doc) and expected > len(doc):
            kind, why = "end-of-file", "the counts ran past the end of the file"
        elif is_line_insert(op):
            kind, why = "line-boundary", "an insert of whole lines goes on a line boundary"
        else:
            kind, why = "word-boundary", "inserting there would split a word and break the syntax"
        message = (
            f"op {index} {_short(op)}: moved from {where(doc, expected)} (offset {expected}) to "
            f"{where(doc, found)} (offset {found}, {found - expected:+d}): {why}"
        )
        return Correction(index, kind, expected, found, message)


_OPENERS = ("{", "(", "[", ":", "=>", "->")
_CLOSERS = ("}", ")", "]")


def _indent_fits(doc: str, offset: int, text: str) -> bool:
    """Whether lines inserted at `offset` are indented like the code around them.

    The first non-blank inserted line should share the indentation of the nearest non-blank line before or
    after it, or sit deeper than a line that opens a block, or deeper than a line that closes one.
    """
    inserted = next((line for line in text.split("\n") if line.strip()), None)
    if inserted is None:
        return True
    before = next((line for line in reversed(doc[:offset].split("\n")[-12:]) if line.strip()), "")
    after = next((line for line in doc[offset:].split("\n", 12)[:12] if line.strip()), "")
    width = len(_indent(inserted))
    if _indent(inserted) in (_indent(before), _indent(after)):
        return True
    if before.rstrip().endswith(_OPENERS) and width > len(_indent(before)):
        return True
    return after.lstrip().startswith(_CLOSERS) and width > len(_indent(after))


def without_blank_lines(text: str) -> str:
    """`text` with its blank lines removed: two results that differ only in blank lines compare equal."""
    return "\n".join(line for line in text.split("\n") if line.strip())


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def quote_candidates(doc: str, runs: Sequence[str], pos: int, done: int) -> tuple[str, list[int]]:
    """Where the applier looks for a quoted op, in order, and the starts it finds there.

    `runs` are the op's quoted runs, longest first (`tools.ot.quoted_runs`); the op's own text is the last.
    ("cursor", [pos]): its text is at the cursor. ("near", starts): the longest run found within QUOTE_RADIUS
    of the cursor (not before `done`), where the nearest fitting candidate is chosen. ("after", starts): the
    longest run found anywhere after `done` (one start places it, several are refused, none leaves fuzzy
    matching). Exposed so that a writer of scripts can check that a quote lands where it means.
    """
    if doc.startswith(runs[-1], pos):
        return "cursor", [pos]
    lo = max(done, pos - QUOTE_RADIUS)
    for run in runs:
        if near := _occurrences(doc, run, lo, min(len(doc), pos + QUOTE_RADIUS + len(run))):
            return "near", near
    for run in runs:
        if anywhere := _occurrences(doc, run, done, len(doc)):
            return "after", anywhere
    return "after", []


def _occurrences(doc: str, text: str, lo: int, hi: int) -> list[int]:
    found, start = [], lo
    while (at := doc.find(text, start, hi)) >= 0:
        found.append(at)
        start = at + 1
    return found


def _fuzzy_find(doc: str, text: str, pos: int, done: int) -> tuple[int, int] | None:
    """A near-exact match of `text` near `pos` (diff-match-patch bitap), as (start, end), or None."""
    if len(text) < FUZZY_MIN_LENGTH:
        return None
    from diff_match_patch import diff_match_patch

    dmp = diff_match_patch()
    dmp.Match_Threshold = 0.25
    dmp.Match_Distance = 500
    pattern = text[: dmp.Match_MaxBits]
    start = dmp.match_main(doc, pattern, max(done, min(pos, len(doc))))
    if start < done:
        return None
    window = doc[start : start + len(text) + len(text) // 4 + 8]
    diffs = dmp.diff_main(text, window, False)
    end = start + dmp.diff_xIndex(diffs, len(text) - 1) + 1
    distance = dmp.diff_levenshtein(dmp.diff_main(text, doc[start:end], False))
    return (start, end) if distance <= max(2, len(text) // 8) else None
