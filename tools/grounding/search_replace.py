"""Grounding a ```search-replace PATH block: SEARCH lines the file has, in order, landing once (`line_blocks`)."""

from __future__ import annotations

from typing import Literal

from tools.formats.lines import DIVIDER, REPLACE, SEARCH
from tools.grounding.line_blocks import MAX_BLANK_LINES, LineFollower


def _marker_next(marker: str, typed: str) -> frozenset[str]:
    """What may follow `typed`, a prefix of the marker line `marker`."""
    return frozenset(marker[len(typed)] if len(typed) < len(marker) else "\n")


class SearchReplaceFollower(LineFollower):
    """A ```search-replace block: `<<<<<<< SEARCH` lines (blank lines between blocks, at most MAX_BLANK_LINES in a
    row), then SEARCH lines that are a run of consecutive whole lines of the document, the `=======` divider only
    once they occur there exactly once, free REPLACE lines, and `>>>>>>> REPLACE`; the closing fence and a stop token
    only between blocks. A line the parser would take for a marker (the marker with trailing whitespace) is refused:
    it is the marker exactly or not at all."""

    def __init__(self, source: str | None) -> None:
        super().__init__(source)
        self.part: Literal["between", "search", "replace"] = "between"

    @property
    def can_stop(self) -> bool:
        return self.part == "between" and not self.partial

    def next_chars(self) -> frozenset[str] | None:
        typed = self.partial
        if self.part == "between":
            if typed:
                return _marker_next(SEARCH, typed)
            return frozenset("<`\n" if self.blank < MAX_BLANK_LINES else "<`")
        if self.part == "replace":
            return None
        chars = self._old_line_chars(typed)
        if chars is None:
            return None
        if self._placed() is not None and DIVIDER.startswith(typed):
            chars |= _marker_next(DIVIDER, typed)
        return frozenset(chars)

    def _backtick(self) -> bool | None:
        return True if self.part == "between" else None  # inside a block a backtick is the file's or the new text

    def _partial_allowed(self, typed: str) -> bool:
        if self.part == "between":
            return SEARCH.startswith(typed)
        if self.part == "search":
            return self._old_line_possible(typed) or (DIVIDER.startswith(typed) and self._placed() is not None)
        return True

    def _line(self, line: str) -> bool:
        if self.part == "between":
            if not line:
                self.blank += 1
                return self.blank <= MAX_BLANK_LINES
            if line != SEARCH:
                return False
            self.part = "search"
            self._begin_block()
            return True
        if self.part == "search":
            if line.rstrip() == DIVIDER:  # the parser takes it for the divider, whatever the file has
                if line != DIVIDER or self._placed() is None:
                    return False
                self.part = "replace"
                return True
            return self._old_line(line)
        if line.rstrip() == REPLACE:
            if line != REPLACE:
                return False
            self._apply()
            self.part = "between"
            return True
        self.new += (line,)
        return True
