"""Grounding an edit script: inside an ```edit block only a well-formed script the applier will place.

The block runs the script parser (`tools.ot_script.ScriptParser`) and a cursor into the file, and text is allowed
only while the block stays a well-formed script that the applier (`tools.patch`) will place:

- names, punctuation and escapes keep the script parseable (no dead ends: `retai` may become `retain`, `retax`
  may not);
- a quoted `delete("…")` / `retain("…")` continues text that occurs in the file at or after the last edit, and
  closes only where the applier finds it: within QUOTE_RADIUS of the cursor, or once anywhere after it;
- a count never runs past the end of the file;
- inserts are free; a stop token may only end the reply between operations;
- whitespace only between operations, and a little (the parser takes any, but a model that cannot go on would
  write it forever).
"""

from __future__ import annotations

import re

from tools.grounding.follower import LINE_END, Forkable
from tools.ot import Insert, Op
from tools.ot_script import (
    HEX_DIGITS,
    JSON_SIMPLE_ESCAPES,
    MAX_COUNT_DIGITS,
    OP_NAMES,
    ScriptParser,
    ScriptSyntaxError,
)
from tools.patch import QUOTE_RADIUS, EditRefused, place

_PIECE = re.compile(r"[^\S\n]*\n|\s+|\S+")  # what is fed at once: a line break ends a piece (a fence may follow)
MAX_GAP = 32  # whitespace characters allowed between two ops
_INSERT_ENDS = frozenset('"\\')  # what ends (or escapes within) an insert's free text
_WHITESPACE = frozenset(chr(code) for code in range(0x3001) if chr(code).isspace())  # the parser's separators
_SYNTAX_CHARS = frozenset(',[]#()"0123456789' + "".join(OP_NAMES)) | _WHITESPACE
_ESCAPE_CHARS = JSON_SIMPLE_ESCAPES | HEX_DIGITS | {"u"}  # what may follow a backslash in a quote


class ScriptFollower(Forkable):
    """One ```edit block as it is written (a `BlockFollower`): the parser, and where the script's cursor is in the
    file. Without a source only the syntax is checked."""

    forked = ("parser",)

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.parser = ScriptParser()
        self.cursor = 0  # where the script's counts and quotes put the cursor
        self.floor = 0  # end of the last deletion: nothing before it can be quoted again
        self.line_start = True

    def feed(self, text: str) -> int | None:
        at = 0
        while at < len(text):
            if self.line_start and text[at] == "`":
                # a closing fence; inside a string the agent's protocol would end the block there all the same
                return at if self.parser.between_ops else None
            piece = _PIECE.match(text, at)
            assert piece is not None  # every character starts a piece
            try:
                ops = self.parser.feed(piece.group())
            except ScriptSyntaxError:
                return None
            if ops and not self._advance():
                return None
            at = piece.end()
            self.line_start = text[at - 1] == "\n"
            if text[at - 1].isspace() and not self._spacing_allowed():
                return None
        return at if self._partial_allowed() else None

    def next_chars(self) -> frozenset[str] | None:
        """Characters that may come next (a superset), or None when almost any may (an insert, a comment)."""
        progress = self.parser.in_progress
        if progress is None:
            return None if self.parser.in_comment else _SYNTAX_CHARS | {"`"}
        name, typed = progress
        if name == "insert" or self.source is None:
            return None
        chars = {'"', "\\", *self._following(typed)}
        return frozenset(chars | _ESCAPE_CHARS if self.parser.in_escape else chars)

    def _following(self, typed: str) -> set[str]:
        """The characters that follow `typed` where the file has it (after the floor)."""
        assert self.source is not None
        source, found = self.source, set()
        at = source.find(typed, max(self.floor, self.cursor - QUOTE_RADIUS))
        while at >= 0 and at + len(typed) < len(source):
            found.add(source[at + len(typed)])
            at = source.find(typed, at + 1)
        return found

    @property
    def in_insert(self) -> bool:
        progress = self.parser.in_progress
        return progress is not None and progress[0] == "insert"

    @property
    def can_stop(self) -> bool:
        return self.parser.between_ops

    @property
    def free_ends(self) -> frozenset[str]:
        """Where next_chars() is None: an insert's text ends at a quote (or escapes), a comment at its line's end."""
        return _INSERT_ENDS if self.in_insert else LINE_END

    def _advance(self) -> bool:
        """Place the script's completed ops as the applier does; False where the applier would refuse."""
        if self.source is None:
            return True
        try:
            self.cursor, self.floor = place(self.source, self.parser.ops)
        except EditRefused:
            return False
        return True

    def _fits(self, op: Op) -> bool:
        """Whether the applier would place the script with `op` (complete but for its `)`) added."""
        if self.source is None or isinstance(op, Insert):
            return True
        try:
            place(self.source, [*self.parser.ops, op])
        except EditRefused:
            return False
        return True

    def _spacing_allowed(self) -> bool:
        """No whitespace inside an op's parentheses, and gaps between ops of at most MAX_GAP characters and two
        line breaks: the parser takes any, but a run of it is how a model that cannot go on would go on forever."""
        parser, text = self.parser, self.parser.text
        if not (parser.in_parentheses or parser.between_ops) or parser.in_comment:
            return True
        gap = text[len(text.rstrip()) :]
        if parser.in_parentheses:
            return not gap
        return len(gap) <= MAX_GAP and gap.count("\n") <= 2

    def _partial_allowed(self) -> bool:
        """Whether what is being written can still become an op the applier places."""
        source, parser = self.source, self.parser
        if not self._spacing_allowed():
            return False
        pending = parser.pending_op
        if pending is not None:
            return self._fits(pending)
        count = parser.partial_count
        if count is not None:
            return len(count) <= MAX_COUNT_DIGITS and (source is None or int(count) <= len(source) - self.cursor)
        progress = parser.in_progress
        if progress is None or progress[0] == "insert" or source is None:
            return True
        start = max(self.floor, self.cursor - QUOTE_RADIUS)
        if source.find(progress[1], start) < 0 or start >= len(source):
            return False
        escape = parser.pending_escape
        return not escape or any(_completes(escape, char) for char in self._following(progress[1]))


def _completes(escape: str, char: str) -> bool:
    """Whether an escape still being written (`\\`, `\\u`, `\\u00`, …) can end as `char` (one UTF-16 unit: a
    character outside the Basic Multilingual Plane would take a surrogate pair, which a quote cannot check half of)."""
    digits = escape[2:]
    if ord(char) > 0xFFFF:
        return False
    if len(escape) == 1:
        return True
    return f"{ord(char):04x}".startswith(digits.lower())
