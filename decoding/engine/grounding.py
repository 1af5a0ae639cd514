"""Grounded decoding: while the model writes an edit, the target may only choose text the file has.

The commonest failed edit, for every agent and format, is quoted text that is not in the file (tabs for spaces,
CRLF, escapes, a word the model misremembers). When the server knows the file (the request's `prediction`), it
can rule such text out as it is decoded. `EditGrounding` follows the reply token by token; inside an ```edit
block it runs the script parser (`tools.ot_script.ScriptParser`) and a cursor into the file, and a token is
allowed only when the block stays a well-formed script that the applier (`tools.patch`) will place:

- names, punctuation and escapes keep the script parseable (no dead ends: `retai` may become `retain`, `retax`
  may not);
- a quoted `delete("…")` / `retain("…")` continues text that occurs in the file at or after the last edit, and
  closes only where the applier finds it: within QUOTE_RADIUS of the cursor, or once anywhere after it;
- a count never runs past the end of the file;
- inserts are free; a stop token may only end the reply between operations;
- whitespace only between operations, and a little (the parser takes any, but a model that cannot go on would
  write it forever).

The other edit formats the evals compare get the same guarantee, so the comparison stays fair: in a
```search-replace PATH block (Aider-style SEARCH/REPLACE blocks) and a ```diff PATH block (udiff hunks without
line numbers) the old lines (SEARCH lines; a hunk's context and removed lines) are whole lines of the file, in
order, and a block may end its old lines (the `=======` divider; the next `@@` header or the closing fence) only
where they occur exactly once, so the applier (`tools.formats.lines.apply_blocks`: the first exact match) lands it where
it is meant. "The file" is the file with the reply's earlier blocks applied, as that applier applies them in
order. New lines are free; markers are exact; stop tokens only between blocks (`LineDocument`, `OldLines`,
`SearchReplaceFollower`, `UdiffFollower`). A bare ```diff (no path) is an ordinary markdown block, left free.

The engine asks `allows(token)` of the target's own choice first (nearly always yes), and only on a refusal looks
further: the target's next best choices, then every allowed token, found by walking the vocabulary sorted by text
along the characters the block may take next (`Vocabulary`; each follower's `next_chars`). Greedy takes the best
allowed token; sampling draws from the target's distribution renormalized over the allowed tokens. Speculative
verification applies the same rule at each verified row, so grounded speculative output equals grounded plain
output.

Blocks outside the file (a fence naming another path than the request's) get the syntax rules only; a block where
no token is allowed (a non-ASCII byte the script cannot take, say) is released: decoded freely to its end, and
counted.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch

from tools.formats.lines import DIVIDER, REPLACE, SEARCH
from tools.grounding.follower import BlockFollower
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

GroundingMode = Literal["off", "edit"]
GROUNDING_MODES: tuple[GroundingMode, ...] = ("off", "edit")
PROMPT_TAIL = 8000  # characters at the end of a prompt looked at for a grounded block it leaves open
_PIECE = re.compile(r"[^\S\n]*\n|\s+|\S+")  # what is fed at once: a line break ends a piece (a fence may follow)
MAX_GAP = 32  # whitespace characters allowed between two ops
FIRST_CHOICES = 64  # the target's best tokens tried, in order, before the allowed set is enumerated
SAMPLING_TRIES = 32  # draws from the unmasked distribution before sampling from the enumerated allowed set
LINE_TAIL = 512  # characters of the current line kept outside blocks (enough for a fence line)
# a block's opening fence: ```edit [PATH] (an edit script), ```search-replace PATH, ```diff PATH (line blocks)
_FENCE = re.compile(r"(?P<fence>`{3,})(?P<tool>edit|search-replace|diff)(?![\w-])[ \t]*(?P<path>[^\n]*?)[ \t]*")
MAX_BLANK_LINES = 2  # blank lines in a row allowed between line blocks (before the first hunk, in a diff)
_LINE_END = frozenset("\n")  # what ends a free line
_INSERT_ENDS = frozenset('"\\')  # what ends (or escapes within) an insert's free text
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")
_WHITESPACE = frozenset(chr(code) for code in range(0x3001) if chr(code).isspace())  # the parser's separators
_SYNTAX_CHARS = frozenset(',[]#()"0123456789' + "".join(OP_NAMES)) | _WHITESPACE
_ESCAPE_CHARS = JSON_SIMPLE_ESCAPES | HEX_DIGITS | {"u"}  # what may follow a backslash in a quote


class Vocabulary:
    """Each token's text as decoded alone, and the texts sorted, for finding tokens by their leading characters.

    `texts[id]` is None for control tokens (`<eos>`, turn markers) and for byte tokens of non-ASCII bytes (half a
    character: a script cannot take them, a reply outside one can).
    """

    def __init__(self, tokenizer) -> None:
        size = len(tokenizer)
        pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
        control = set(tokenizer.all_special_ids)
        control |= {index for index, added in tokenizer.added_tokens_decoder.items() if added.special}
        self.texts: list[str | None] = []
        for index, piece in enumerate(pieces):
            byte = _BYTE_PIECE.fullmatch(piece)
            if index in control:
                text = None
            elif byte:
                value = int(byte.group(1), 16)
                text = chr(value) if value < 0x80 else None
            else:
                text = piece.replace("\u2581", " ")
            self.texts.append(text or None)
        by_text: dict[str, list[int]] = {}
        for index, text in enumerate(self.texts):
            if text is not None:
                by_text.setdefault(text, []).append(index)
        self.ids_by_text = by_text
        self.sorted_texts = sorted(by_text)

    def containing(self, chars: frozenset[str]) -> tuple[list[int], torch.Tensor]:
        """(ids whose text has any of `chars`, a mask [V] of the ids whose text has none of them)."""
        return _containing(self, chars)


@cache
def vocabulary(tokenizer) -> Vocabulary:
    """The tokenizer's `Vocabulary`, built once (about a second for Gemma's 262k tokens)."""
    return Vocabulary(tokenizer)


@cache
def _containing(vocab: Vocabulary, chars: frozenset[str]) -> tuple[list[int], torch.Tensor]:
    with_chars = [i for i, text in enumerate(vocab.texts) if text is not None and not chars.isdisjoint(text)]
    free = torch.tensor([text is not None for text in vocab.texts])
    free[with_chars] = False
    return with_chars, free


@dataclass
class GroundingStats:
    blocks: int = 0  # grounded blocks the reply opened (or the prompt left open)
    constrained_tokens: int = 0  # tokens where the target's own choice was not allowed and another was taken
    released_blocks: int = 0  # blocks decoded freely because no token was allowed


class ScriptFollower:
    """One edit block as it is written: the parser, and where the script's cursor is in the file.

    `feed(text)` returns where in `text` the block ended (at its closing fence), len(text) when it goes on,
    or None when the text is not allowed. Without a source only the syntax is checked.
    """

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.parser = ScriptParser()
        self.cursor = 0  # where the script's counts and quotes put the cursor
        self.floor = 0  # end of the last deletion: nothing before it can be quoted again
        self.line_start = True

    def fork(self) -> ScriptFollower:
        copy = object.__new__(ScriptFollower)
        copy.__dict__.update(self.__dict__)
        copy.parser = self.parser.fork()
        return copy

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
        return _INSERT_ENDS if self.in_insert else _LINE_END

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


# -- line blocks: search/replace and udiff ---------------------------------------------------------------------------


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


class _LineFollower:
    """What the search/replace and udiff followers share: the line being written (checked as a prefix of a line that
    may be allowed, whole at its "\\n"), the document with the earlier blocks applied, the block's old lines and its
    new lines. Without a source the old lines are free text and only the syntax is checked."""

    free_ends = _LINE_END

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.doc = LineDocument.of(source) if source is not None else None
        self.partial = ""  # the line being written
        self.blank = 0  # blank lines in a row between blocks
        self.old: OldLines | None = None  # the block's old lines (None without a source)
        self.old_count = 0
        self.new: tuple[str, ...] = ()  # the block's new lines

    def fork(self) -> _LineFollower:
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)  # every field is immutable or shared read-only
        return copy

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


def _marker_next(marker: str, typed: str) -> frozenset[str]:
    """What may follow `typed`, a prefix of the marker line `marker`."""
    return frozenset(marker[len(typed)] if len(typed) < len(marker) else "\n")


class SearchReplaceFollower(_LineFollower):
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


class UdiffFollower(_LineFollower):
    """A ```diff PATH block of hunks without line numbers: before the first hunk only `---` / `+++` lines and blank
    lines (at most MAX_BLANK_LINES in a row); a hunk opens at a line starting with `@@`; in it, " " and "-" lines
    (and an empty line, which the parser reads as blank context) are, after the sign, a run of consecutive whole
    lines of the document, "+" lines are free. A hunk ends (at the next `@@` line, the closing fence or a stop
    token) only once its old lines occur exactly once. Any other line (a `\\ No newline` note too) is refused."""

    def __init__(self, source: str | None) -> None:
        super().__init__(source)
        self.in_hunk = False

    @property
    def can_stop(self) -> bool:
        return not self.partial and self._may_end()

    def _may_end(self) -> bool:
        return not self.in_hunk or self._placed() is not None

    def next_chars(self) -> frozenset[str] | None:
        typed = self.partial
        if not self.in_hunk:
            if not typed:
                return frozenset("-+@`\n" if self.blank < MAX_BLANK_LINES else "-+@`")
            return frozenset(typed[0]) if typed in ("-", "--", "+", "++", "@") else None
        if not typed:
            return frozenset(" -+\n@`" if self._may_end() else " -+\n")
        if typed[0] in " -":
            chars = self._old_line_chars(typed[1:])
            return None if chars is None else frozenset(chars)
        return frozenset("@") if typed == "@" else None  # a "+" line or a header: free to the end of the line

    def _backtick(self) -> bool | None:
        return self._may_end()  # a backtick is no hunk line: the closing fence, where the hunk may end

    def _partial_allowed(self, typed: str) -> bool:
        if not typed:
            return True
        if not self.in_hunk:
            return typed.startswith(("---", "+++", "@@")) or typed in ("-", "--", "+", "++", "@")
        if typed[0] in " -":
            return self._old_line_possible(typed[1:])
        if typed[0] == "@":
            return (typed == "@" or typed.startswith("@@")) and self._may_end()
        return typed[0] == "+"

    def _line(self, line: str) -> bool:
        if line.startswith("@@"):
            if not self._may_end():
                return False
            if self.in_hunk:
                self._apply()
            self.in_hunk = True
            self._begin_block()
            return True
        if not self.in_hunk:
            if not line:
                self.blank += 1
                return self.blank <= MAX_BLANK_LINES
            return line.startswith(("---", "+++"))
        sign, text = line[:1], line[1:]
        if sign == "+":
            self.new += (text,)
            return True
        if sign not in ("", " ", "-") or not self._old_line(text):
            return False
        if sign != "-":
            self.new += (text,)
        return True


class ReplyFollower:
    """The reply read so far: the current line outside blocks, or the grounded block being written."""

    def __init__(self, source: str | None, path: str | None = None) -> None:
        self.source, self.path = source, path
        self.line = ""
        self.block: BlockFollower | None = None
        self.blocks = 0  # grounded blocks opened

    def fork(self) -> ReplyFollower:
        copy = object.__new__(ReplyFollower)
        copy.__dict__.update(self.__dict__)
        copy.block = self.block.fork() if self.block is not None else None
        return copy

    def read(self, text: str) -> bool:
        """Take in `text`; False (state then undefined: read into a fork) when a block does not allow it."""
        at = 0
        while at < len(text):
            if self.block is None:
                newline = text.find("\n", at)
                if newline < 0:
                    self.line = (self.line + text[at:])[-LINE_TAIL:]
                    return True
                self._open(self.line + text[at:newline])
                self.line, at = "", newline + 1
                continue
            taken = self.block.feed(text[at:])
            if taken is None:
                return False
            at += taken
            if at < len(text):
                self.block = None
        return True

    def _open(self, line: str) -> None:
        fence = _opening_fence(line)
        if fence is not None:
            tool, path = fence
            source = self.source if self.path is None or path == self.path else None  # another file: syntax only
            self.block = _FOLLOWERS[tool](source)
            self.blocks += 1


_FOLLOWERS: dict[str, Callable[[str | None], BlockFollower]] = {
    "edit": ScriptFollower,
    "search-replace": SearchReplaceFollower,
    "diff": UdiffFollower,
}


def _opening_fence(line: str) -> tuple[str, str] | None:
    """(tool, path) where `line` opens a grounded block: ```edit [PATH], ```search-replace PATH or ```diff PATH (a
    bare ```diff is an ordinary markdown block)."""
    fence = _FENCE.fullmatch(line)
    if fence is None or (fence["tool"] != "edit" and not fence["path"]):
        return None
    return fence["tool"], fence["path"]


def opens_edit_block(text: str) -> bool:
    """Whether `text` (a prompt's end) leaves a grounded block open (```edit, ```search-replace PATH, ```diff PATH):
    a reply to it starts inside one."""
    reply = ReplyFollower(None)
    return reply.read(_from_last_fence(text)) and reply.block is not None


def _from_last_fence(text: str) -> str:
    """`text` from its last opening fence line on (earlier blocks, e.g. examples, are no concern of the reply)."""
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines[:-1]) if _opening_fence(line)]
    return "\n".join(lines[fences[-1] if fences else -1 :])


class EditGrounding:
    """Follows one reply and says which tokens keep its edit blocks grounded in `source` (see the module doc).

    `prompt_tail`: the end of the prompt as text, so a reply that continues a block the prompt opened is grounded
    from its first token. `path`: when given, only blocks for that path are checked against `source`.
    """

    def __init__(
        self,
        vocab: Vocabulary,
        source: str | None,
        stop_ids: frozenset[int] = frozenset(),
        path: str | None = None,
        prompt_tail: str = "",
    ) -> None:
        self.vocab, self.stop_ids = vocab, stop_ids
        self.reply = ReplyFollower(source, path)
        if not self.reply.read(_from_last_fence(prompt_tail)):  # the prompt's block is not grounded in this file
            self.reply.block = None
        self.reply.blocks = int(self.reply.block is not None)
        self.constrained_tokens = 0
        self.released_blocks = 0

    @property
    def stats(self) -> GroundingStats:
        return GroundingStats(self.reply.blocks, self.constrained_tokens, self.released_blocks)

    # -- the engine's questions -----------------------------------------------------------------------

    def allows(self, token: int) -> bool:
        block, text = self.reply.block, self.vocab.texts[token]
        if text is None:
            return block is None or (token in self.stop_ids and block.can_stop)
        if block is None and "\n" not in text:
            return True
        return self.reply.fork().read(text)

    def advance(self, token: int) -> None:
        """Take `token` as written; a token that is not allowed releases the block (and is read as free text)."""
        text = self.vocab.texts[token]
        if text is None:
            if not self.allows(token):
                self._release()
            return
        trial = self.reply.fork()
        if not trial.read(text):
            self._release()
            trial = self.reply.fork()
            if not trial.read(text):  # a block it opened does not allow the rest of it
                self._release()
                self.reply.line = ""
                return
        self.reply = trial

    def best_allowed(self, logits: torch.Tensor) -> int:
        """The allowed token with the highest logit (logits [V]); counts a constrained token."""
        self.constrained_tokens += 1
        top = torch.topk(logits, min(FIRST_CHOICES, logits.shape[-1])).indices.tolist()
        for token in top:
            if self.allows(token):
                return token
        allowed = self.allowed_tokens()
        if not allowed:
            return top[0]  # advance() releases the block
        candidates = torch.tensor(allowed)
        return int(candidates[logits[candidates].argmax()])

    def sample(self, probs: torch.Tensor, generator: torch.Generator | None) -> int:
        """One token from probs [V] renormalized over the allowed tokens."""
        draws = torch.multinomial(probs, SAMPLING_TRIES, replacement=True, generator=generator).tolist()
        for attempt, token in enumerate(draws):
            if self.allows(token):
                self.constrained_tokens += attempt > 0
                return token
        self.constrained_tokens += 1
        allowed = self.allowed_tokens()
        if not allowed:
            return draws[0]  # advance() releases the block
        masked = probs[torch.tensor(allowed)]
        weights = masked if masked.sum() > 0 else torch.ones(len(allowed))
        return allowed[int(torch.multinomial(weights, 1, generator=generator))]

    def allowed_tokens(self) -> list[int]:
        """Every allowed token id: a walk over the vocabulary along the characters the block may take next."""
        block = self.reply.block
        if block is None:
            return list(range(len(self.vocab.texts)))
        allowed = [token for token in self.stop_ids if self.allows(token)]
        if block.next_chars() is None:  # free text (an insert, a new line): every token without what ends it
            with_ends, free = self.vocab.containing(block.free_ends)
            allowed += torch.nonzero(free).flatten().tolist()
            return allowed + [token for token in with_ends if self.allows(token)]
        self._walk(self.reply, "", 0, len(self.vocab.sorted_texts), allowed)
        return allowed

    def _walk(self, reply: ReplyFollower, prefix: str, lo: int, hi: int, out: list[int]) -> None:
        """Collect the allowed tokens of sorted_texts[lo:hi], which all start with `prefix`, read by `reply`."""
        texts, ids = self.vocab.sorted_texts, self.vocab.ids_by_text
        if lo < hi and texts[lo] == prefix:
            out += ids[prefix] if prefix else []
            lo += 1
        chars = reply.block.next_chars() if reply.block is not None else None
        if chars is None:  # out of the block, or into free text: check what is left one by one
            out += [i for text in texts[lo:hi] if reply.fork().read(text[len(prefix) :]) for i in ids[text]]
            return
        for char in sorted(chars):
            start = bisect_left(texts, prefix + char, lo, hi)
            end = bisect_left(texts, prefix + chr(ord(char) + 1), start, hi)
            if start < end:
                child = reply.fork()
                if child.read(char):
                    self._walk(child, prefix + char, start, end, out)

    def _release(self) -> None:
        if self.reply.block is not None:
            self.reply.block = None
            self.released_blocks += 1
