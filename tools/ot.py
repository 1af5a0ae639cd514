"""The exact core of the edit language: operations on text, and apply / invert / compose / diff.

An operation list walks a document from its start: `Retain` keeps code points, `Delete` removes them,
`Insert` adds text. Counts are Unicode code points (Python `str` indices). Whatever the list does not
reach is kept, so a trailing retain is optional. `Retain` and `Delete` may carry the text they cover
("quoted"); the exact core checks that text, and the tolerant applier (`tools.patch`) uses it to
re-anchor miscounted scripts. Nothing here guesses: every function either is exact or raises `OTError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeGuard


class OTError(ValueError):
    """An operation list does not fit the document it is applied to."""


@dataclass(frozen=True, slots=True)
class _Span:
    """An op over the document's own text: `n` code points, and the text they must be when it is quoted."""

    n: int
    text: str | None = None

    def __post_init__(self) -> None:
        _check_count(self)


class Retain(_Span):
    __slots__ = ()


class Delete(_Span):
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Insert:
    text: str


Op = Retain | Delete | Insert


def _check_count(op: _Span) -> None:
    if op.n < 0:
        raise OTError(f"{type(op).__name__.lower()} count must not be negative, got {op.n}")
    if op.text is not None and len(op.text) != op.n:
        raise OTError(f"{type(op).__name__.lower()} count {op.n} does not match its text of length {len(op.text)}")


def retain(arg: int | str) -> Retain:
    """`retain(5)` or the self-checking `retain("text")`."""
    return Retain(len(arg), arg) if isinstance(arg, str) else Retain(arg)


def delete(arg: int | str) -> Delete:
    """`delete(5)` or the self-checking `delete("text")`."""
    return Delete(len(arg), arg) if isinstance(arg, str) else Delete(arg)


def insert(text: str) -> Insert:
    return Insert(text)


def op_length(op: Op) -> int:
    """Code points the op covers in the document it applies to (inserts cover none)."""
    return 0 if isinstance(op, Insert) else op.n


def is_quoted(op: Op | None) -> TypeGuard[Retain | Delete]:
    """A retain or delete that carries its text, and so can be checked against the document."""
    return isinstance(op, Retain | Delete) and op.text is not None


def format_op(op: Op) -> str:
    """The model-facing spelling of one op, e.g. `delete("foo")` or `retain(12)`."""
    name = type(op).__name__.lower()
    arg = op.text if isinstance(op, Insert) or op.text is not None else op.n
    return f"{name}({json.dumps(arg, ensure_ascii=False) if isinstance(arg, str) else arg})"


def format_script(ops: Iterable[Op]) -> str:
    """One op per line: the form `ot_diff` hands to models and people."""
    return "\n".join(format_op(op) for op in ops)


def _slice(op: Retain | Delete, start: int, end: int) -> Retain | Delete:
    text = None if op.text is None else op.text[start:end]
    return type(op)(end - start, text)


def _merge(a: Op, b: Op) -> Op | None:
    """`a` and `b` as one op when they are of the same kind, else None."""
    if isinstance(a, Insert) and isinstance(b, Insert):
        return Insert(a.text + b.text)
    if isinstance(a, _Span) and isinstance(b, _Span) and type(a) is type(b):
        text = a.text + b.text if a.text is not None and b.text is not None else None
        return type(a)(a.n + b.n, text)
    return None


def normalize(ops: Iterable[Op]) -> list[Op]:
    """Drop empty ops, merge neighbours of one kind, put an insert before an adjacent delete, and drop
    the trailing retain (the rest of the document is kept anyway)."""
    out: list[Op] = []
    for op in ops:
        if op_length(op) == 0 and not (isinstance(op, Insert) and op.text):
            continue
        if isinstance(op, Insert) and out and isinstance(out[-1], Delete):
            # delete+insert and insert+delete mean the same; keep one canonical order.
            deleted = out.pop()
            _append(out, op)
            out.append(deleted)
            continue
        _append(out, op)
    while out and isinstance(out[-1], Retain):
        out.pop()
    return out


def _append(out: list[Op], op: Op) -> None:
    merged = _merge(out[-1], op) if out else None
    if merged is None:
        out.append(op)
    else:
        out[-1] = merged


def apply(doc: str, ops: Sequence[Op]) -> str:
    """Apply `ops` to `doc` exactly: counts must fit and quoted text must match where it stands."""
    pieces: list[str] = []
    cursor = 0
    for index, op in enumerate(ops):
        if isinstance(op, Insert):
            pieces.append(op.text)
            continue
        end = cursor + op.n
        if end > len(doc):
            raise OTError(
                f"op {index} {format_op(op)} runs past the end of the document "
                f"(at offset {cursor}, {len(doc) - cursor} code points left)"
            )
        if op.text is not None and doc[cursor:end] != op.text:
            raise OTError(
                f"op {index} {format_op(op)} does not match the document at offset {cursor}: "
                f"found {json.dumps(doc[cursor:end], ensure_ascii=False)}"
            )
        if isinstance(op, Retain):
            pieces.append(doc[cursor:end])
        cursor = end
    pieces.append(doc[cursor:])
    return "".join(pieces)


def invert(ops: Sequence[Op], doc: str) -> list[Op]:
    """The ops that turn `apply(doc, ops)` back into `doc`; deleted text comes from `doc`."""
    inverse: list[Op] = []
    cursor = 0
    for op in ops:
        if isinstance(op, Insert):
            inverse.append(Delete(len(op.text), op.text))
            continue
        covered = doc[cursor : cursor + op.n]
        if len(covered) != op.n:
            raise OTError(f"{format_op(op)} at offset {cursor} runs past the end of the document")
        inverse.append(Retain(op.n) if isinstance(op, Retain) else Insert(covered))
        cursor += op.n
    return normalize(inverse)


def compose(first: Sequence[Op], second: Sequence[Op]) -> list[Op]:
    """One op list equal to applying `first`, then `second` (both with implicit trailing retains)."""
    out: list[Op] = []
    a_ops, b_ops = list(first), list(second)
    ia = ib = 0
    a: Op | None = a_ops[0] if a_ops else None
    b: Op | None = b_ops[0] if b_ops else None
    while a is not None or b is not None:
        if isinstance(a, Delete):
            out.append(a)
            ia, a = _next(a_ops, ia)
            continue
        if isinstance(b, Insert):
            out.append(b)
            ib, b = _next(b_ops, ib)
            continue
        if b is None:  # the rest of `first` passes through the implicit trailing retain of `second`
            assert a is not None  # the loop runs while either list has ops left
            out.append(a)
            ia, a = _next(a_ops, ia)
            continue
        if a is None:  # `second` reaches past what `first` touched: it acts on the kept rest
            out.append(b)
            ib, b = _next(b_ops, ib)
            continue
        # a is a Retain or an Insert (it produced text); b is a Retain or a Delete (it consumes text).
        a_len = len(a.text) if isinstance(a, Insert) else a.n
        size = min(a_len, b.n)
        a_part = Insert(a.text[:size]) if isinstance(a, Insert) else _slice(a, 0, size)
        b_part = _slice(b, 0, size)
        if isinstance(a_part, Insert):
            if isinstance(b_part, Retain):
                out.append(a_part)
            # insert then delete: nothing remains
        elif isinstance(b_part, Retain):
            out.append(Retain(size, a_part.text if a_part.text is not None else b_part.text))
        else:
            out.append(Delete(size, b_part.text if b_part.text is not None else a_part.text))
        a = (Insert(a.text[size:]) if isinstance(a, Insert) else _slice(a, size, a_len)) if size < a_len else None
        b = _slice(b, size, b.n) if size < b.n else None
        if a is None:
            ia, a = _next(a_ops, ia)
        if b is None:
            ib, b = _next(b_ops, ib)
    return normalize(out)


def _next(ops: list[Op], index: int) -> tuple[int, Op | None]:
    index += 1
    return index, ops[index] if index < len(ops) else None


MERGE_WITHIN = 64  # changes fewer code points apart than this are written as one delete and one insert


def ot_diff(
    before: str, after: str, *, quoted: bool = True, merge_within: int = MERGE_WITHIN, timeout: float = 2.0
) -> list[Op]:
    """A minimal op list turning `before` into `after`.

    diff-match-patch in line mode then characters, with semantic cleanup, so edits land on word and
    line boundaries the way a person would write them. Deletes carry their text when `quoted`, which
    makes the script self-checking and lets the applier re-anchor a miscounted retain; a quoted script is
    in `written_order`, and changes fewer than `merge_within` code points apart become one replacement (the text
    between them deleted and inserted again): a count and an anchor per change cost more to write than
    repeating a few code points, which a drafter copies from the delete. A count-only script stays minimal
    and keeps the insert first: after an unquoted delete that ends mid-line, the applier would move an insert
    of whole lines to a line boundary.
    """
    import fast_diff_match_patch as fdmp

    segments = fdmp.diff(before, after, timelimit=timeout, checklines=True, cleanup="Semantic", counts_only=True)
    ops: list[Op] = []
    old_pos = new_pos = 0
    for index, (kind, count) in enumerate(segments):
        if kind == "=":
            kept = before[old_pos : old_pos + count]
            between_changes = 0 < index < len(segments) - 1  # diff segments alternate: changes on both sides
            if quoted and between_changes and count < merge_within:
                ops += [Delete(count, kept), Insert(kept)]
            else:
                ops.append(Retain(count))
            old_pos += count
            new_pos += count
        elif kind == "-":
            ops.append(Delete(count, before[old_pos : old_pos + count] if quoted else None))
            old_pos += count
        else:
            ops.append(Insert(after[new_pos : new_pos + count]))
            new_pos += count
    return written_order(anchor(before, normalize(ops))) if quoted else normalize(ops)


def written_order(ops: Sequence[Op]) -> list[Op]:
    """`ops` with each replacement as a script writes it: the delete, then the insert that replaces it.

    The same edit as `normalize`'s insert-first order, but the one the model is taught, and the one a drafter can
    follow: an insert after its delete mostly repeats the deleted text, which is already written.
    """
    out = list(ops)
    for index in range(len(out) - 1):
        if isinstance(out[index], Insert) and isinstance(out[index + 1], Delete):
            out[index], out[index + 1] = out[index + 1], out[index]
    return out


ANCHOR_WINDOW = 36  # code points around an op within which its quoted text should be unique
MAX_ANCHOR = 48  # longest quoted retain added to make a quote unique
SNAP_RADIUS = 3  # code points within which the applier moves an insert after a count to a line or word boundary


def quoted_run(ops: Sequence[Op], index: int) -> str:
    """The document text that the quoted ops from `index` on cover, back to back (inserts skipped).

    `retain("foo(") delete("a")` covers "foo(a": the applier searches for the whole run, which is far
    more often unique than either quote alone.
    """
    return quoted_runs(ops, index)[0]


def quoted_runs(ops: Sequence[Op], index: int) -> list[str]:
    """The runs of the quoted ops from `index` on, longest first, down to the op's own text.

    Without counts between them, consecutive quotes need not be back to back in the document: in
    `delete("a") insert("b") retain("c")` the retain may anchor a later change. So the applier looks for the
    longest run the document has, and each shorter one is a fallback.
    """
    parts: list[str] = []
    for op in ops[index:]:
        if isinstance(op, Insert):
            continue
        if op.text is None:
            break
        parts.append(op.text)
    runs = ["".join(parts[:size]) for size in range(len(parts), 0, -1)]
    return runs or [""]


def anchor(doc: str, ops: list[Op]) -> list[Op]:
    """Add short quoted retains where a miscounted script could otherwise land in the wrong place.

    Four cases: an inline insert (nothing else says where it goes), an insert of whole lines that does
    not sit on a line boundary (diffs sometimes put one inside indentation, where the applier would move
    it), one that does but has another line boundary within SNAP_RADIUS (blank or very short lines: a count
    a little off lands on that one, which the applier must take as meant), and a quoted delete whose text
    recurs nearby (a lone "," or "    "). In each, the end of the retain before it is quoted, as much as makes
    it unique nearby.
    """
    out: list[Op] = []
    pos = 0
    for index, op in enumerate(ops):
        previous = out[-1] if out else None
        if isinstance(previous, Retain) and previous.text is None:
            size = _anchor_size(doc, ops, index, pos, previous.n)
            if size:
                out[-1:] = [Retain(previous.n - size), Retain(size, doc[pos - size : pos])]
        out.append(op)
        pos += op_length(op)
    return [op for op in out if op_length(op) or isinstance(op, Insert)]


def _anchor_size(doc: str, ops: list[Op], index: int, pos: int, available: int) -> int:
    """How many code points before `pos` to quote in front of `ops[index]` (0: none needed)."""
    op = ops[index]
    following = ops[index + 1] if index + 1 < len(ops) else None
    if isinstance(op, Insert):
        if is_quoted(following):
            return 0
        if on_line_boundary(doc, pos, op.text):
            if line_boundaries_near(doc, pos, op.text) == [pos]:
                return 0
            run, smallest = "", 1
        else:
            line_start = doc.rfind("\n", 0, pos) + 1
            run, smallest = "", min(available, max(pos - line_start, 1) if is_line_insert(op) else 1)
    elif isinstance(op, Delete) and op.text is not None:
        run, smallest = quoted_run(ops, index), 0
    else:
        return 0
    for size in range(smallest, min(available, max(MAX_ANCHOR, smallest)) + 1):
        pattern = doc[pos - size : pos] + run
        lo, hi = max(0, pos - size - ANCHOR_WINDOW), pos + len(run) + ANCHOR_WINDOW
        if pattern and not _overlaps_itself(doc, pattern, lo, hi):
            return size
    return smallest


def line_boundaries_near(doc: str, pos: int, text: str, floor: int = 0) -> list[int]:
    """The offsets within SNAP_RADIUS of `pos` (none before `floor`) where an insert of `text` sits on a line
    boundary: where the applier may put a whole-line insert that a count brought to `pos`."""
    lo, hi = max(floor, pos - SNAP_RADIUS), min(len(doc), pos + SNAP_RADIUS)
    return [q for q in range(lo, hi + 1) if on_line_boundary(doc, q, text)]


def _overlaps_itself(doc: str, pattern: str, lo: int, hi: int) -> bool:
    """str.count misses overlapping matches ("aa" in "aaa"): look for a second start explicitly."""
    first = doc.find(pattern, lo, hi)
    return first >= 0 and doc.find(pattern, first + 1, hi) >= 0


def is_line_insert(op: Op | None) -> bool:
    """An insert of whole lines: its text ends with a newline (it goes at a line start) or begins with one
    (it goes at a line end)."""
    return isinstance(op, Insert) and (op.text.endswith("\n") or op.text.startswith("\n"))


def on_line_boundary(doc: str, pos: int, text: str) -> bool:
    """Whether an insert of `text` at `pos` sits where whole lines belong: text ending with a newline at a
    line start, text beginning with one at a line end. Inline text is never on a line boundary."""
    if text.endswith("\n"):
        return pos == 0 or doc[pos - 1] == "\n"
    if text.startswith("\n"):
        return pos == len(doc) or doc[pos] == "\n"
    return False
