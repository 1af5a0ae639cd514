"""Grounding line blocks (search/replace and udiff): their old lines are whole lines of the file, in order.

The other edit formats the evals compare get the edit script's guarantee, so the comparison stays fair: in a
```search-replace PATH block (Aider-style SEARCH/REPLACE blocks) and a ```diff PATH block (udiff hunks without
line numbers) the old lines (SEARCH lines; a hunk's context and removed lines) are whole lines of the file, in
order, and a block may end its old lines (the `=======` divider; the next `@@` header or the closing fence) only
where they occur exactly once, so the applier (`tools.formats.lines.apply_blocks`: the first exact match, its first
step) lands it where it is meant. "The file" is the file with the reply's earlier blocks applied, as that applier
applies them in order. New lines are free; markers are exact; stop tokens only between blocks. This module holds
what both formats share (`LineDocument`, `OldLines`, `LineFollower`); `search_replace` and `udiff` the rest.
"""

from __future__ import annotations

from bisect import bisect_left

from tools.grounding.follower import LINE_END, Forkable

MAX_BLANK_LINES = 2  # blank lines in a row allowed between line blocks (before the first hunk, in a diff)


class LineDocument:
    """A file as the line blocks' applier sees it: its lines without their "\\n" (a last line without one compares
    equal all the same), with an index built on first use: where each line is, and the distinct lines sorted."""

    def __init__(self, lines: tuple[str, ...]) -> None:
        self.lines = lines
        self._where: dict[str, list[int]] | None = None
        self._sorted: list[str] | None = None
        self._replaced: tuple[tuple, LineDocument] | None = None  # the last replacement, shared by forks

    @classmethod
    def of(cls, text: str) -> LineDocument:
        lines = text.split("\n")
        if not lines[-1]:
            lines.pop()
        return cls(tuple(lines))

    def where(self, line: str) -> list[int]:
        """The indices of the lines equal to `line`, in order."""
        if self._where is None:
            self._where = {}
            for index, text in enumerate(self.lines):
                self._where.setdefault(text, []).append(index)
        return self._where.get(line, [])

    @property
    def sorted_lines(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(set(self.lines))
        return self._sorted

    def replaced(self, start: int, count: int, new: tuple[str, ...]) -> LineDocument:
        """The document with lines[start : start + count] replaced by `new`, as the applier replaces a block."""
        key = (start, count, new)
        if self._replaced is None or self._replaced[0] != key:
            self._replaced = key, LineDocument(self.lines[:start] + new + self.lines[start + count :])
        return self._replaced[1]


class OldLines:
    """The old lines of one block written so far (SEARCH lines; a hunk's context and removed lines): the starts of
    the runs of consecutive whole lines of the document they are, and so which lines may come next."""

    def __init__(self, doc: LineDocument, count: int = 0, starts: tuple[int, ...] = ()) -> None:
        self.doc, self.count, self.starts = doc, count, starts
        self._next: list[str] | None = None

    def candidates(self) -> list[str]:
        """The distinct lines that may come next, sorted: any line first, then the line after each run."""
        if self.count == 0:
            return self.doc.sorted_lines
        if self._next is None:
            lines, count = self.doc.lines, self.count
            self._next = sorted({lines[s + count] for s in self.starts if s + count < len(lines)})
        return self._next

    def can_start(self, typed: str) -> bool:
        """Whether a line begun as `typed` can still become one that may come next."""
        lines = self.candidates()
        at = bisect_left(lines, typed)
        return at < len(lines) and lines[at].startswith(typed)

    def following(self, typed: str) -> set[str]:
        """The characters that may follow `typed` in a line that may come next ("\\n" where it is one): one bisection
        per distinct character, not a scan of the lines."""
        lines, found = self.candidates(), set()
        at = bisect_left(lines, typed)
        if at < len(lines) and lines[at] == typed:
            found.add("\n")
            at += 1
        while at < len(lines) and lines[at].startswith(typed):
            char = lines[at][len(typed)]
            found.add(char)
            if ord(char) == 0x10FFFF:
                break
            at = bisect_left(lines, typed + chr(ord(char) + 1), at)
        return found

    def extended(self, line: str) -> OldLines | None:
        """The run with `line` added; None where the document has no such run."""
        lines, count = self.doc.lines, self.count
        if count == 0:
            starts = tuple(self.doc.where(line))
        else:
            starts = tuple(s for s in self.starts if s + count < len(lines) and lines[s + count] == line)
        return OldLines(self.doc, count + 1, starts) if starts else None

    @property
    def placed(self) -> int | None:
        """Where the applier puts these old lines: their one run; None while they occur more than once (or, with
        none written, unless the document is empty: the applier puts nothing only into an empty file)."""
        if self.count == 0:
            return None if self.doc.lines else 0
        return self.starts[0] if len(self.starts) == 1 else None


class LineFollower(Forkable):
    """What the search/replace and udiff followers share: the line being written (checked as a prefix of a line that
    may be allowed, whole at its "\\n"), the document with the earlier blocks applied, the block's old lines and its
    new lines. Without a source the old lines are free text and only the syntax is checked. Every field is an
    immutable value or (the documents, with the indexes they build on first use) shared read-only, so a fork copies
    none of them."""

    free_ends = LINE_END

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.doc = LineDocument.of(source) if source is not None else None
        self.partial = ""  # the line being written
        self.blank = 0  # blank lines in a row between blocks
        self.old: OldLines | None = None  # the block's old lines (None without a source)
        self.old_count = 0
        self.new: tuple[str, ...] = ()  # the block's new lines

    def feed(self, text: str) -> int | None:
        at = 0
        while at < len(text):
            if not self.partial and text[at] == "`":
                closes = self._backtick()
                if closes is not None:
                    return at if closes else None
            newline = text.find("\n", at)
            if newline < 0:
                self.partial += text[at:]
                break
            line, self.partial = self.partial + text[at:newline], ""
            if not self._line(line):
                return None
            at = newline + 1
        return len(text) if self._partial_allowed(self.partial) else None

    def _begin_block(self) -> None:
        self.old = OldLines(self.doc) if self.doc is not None else None
        self.old_count, self.new, self.blank = 0, (), 0

    def _old_line(self, line: str) -> bool:
        if self.old is not None:
            old = self.old.extended(line)
            if old is None:
                return False
            self.old = old
        self.old_count += 1
        return True

    def _placed(self) -> int | None:
        """Where the block's old lines land, None while they do not land in one place (without a source: once
        there is an old line)."""
        if self.old is None:
            return 0 if self.old_count else None
        return self.old.placed

    def _apply(self) -> None:
        """Apply the finished block to the document, as the applier does before it looks for the next one."""
        start = self._placed()
        if self.doc is not None and start is not None:
            self.doc = self.doc.replaced(start, self.old_count, self.new)

    def _old_line_possible(self, typed: str) -> bool:
        return self.old is None or self.old.can_start(typed)

    def _old_line_chars(self, typed: str) -> set[str] | None:
        return None if self.old is None else self.old.following(typed)

    # what each format decides
    @property
    def can_stop(self) -> bool:
        raise NotImplementedError

    def next_chars(self) -> frozenset[str] | None:
        raise NotImplementedError

    def _backtick(self) -> bool | None:
        """A backtick starting a line: the closing fence (True), refused (False), or the line's text (None)."""
        raise NotImplementedError

    def _line(self, line: str) -> bool:
        """Take a whole line; False where it is not allowed."""
        raise NotImplementedError

    def _partial_allowed(self, typed: str) -> bool:
        raise NotImplementedError
