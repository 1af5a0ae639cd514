"""The model-facing spelling of edit scripts, and a streaming parser for it.

    [retain(8), delete("really"), insert("very very")]

Operations are separated by commas and/or newlines, optionally wrapped in `[` `]`; `#` starts a comment
that runs to the end of the line. Arguments are counts or JSON string literals. The parser is fed chunks
as tokens arrive, yields each operation as soon as its `)` is read, and exposes the decoded text of an
`insert("…` still being written, which the TUI shows and the cursor drafter follows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from tools.ot import Delete, Insert, Op, OTError, Retain

OP_NAMES = ("retain", "delete", "insert")
_STRING_STOP = re.compile(r'["\\]')
_NAME = re.compile(r"[A-Za-z_]\w*")
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: `\d` and isdigit() take any script's digits
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_COUNT_DIGITS = 18  # a count longer than this is larger than any file (and than Python parses quickly)


_JSON_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_COUNT = rf"[0-9]{{1,{MAX_COUNT_DIGITS}}}"
# One op per line, as `format_script` writes scripts: the script's syntax as a regular expression, for engines that
# constrain decoding by a grammar (vLLM's structured outputs) rather than step by step.
SCRIPT_LINE_PATTERN = rf"(?:retain|delete)\((?:{_COUNT}|{_JSON_STRING})\)|insert\({_JSON_STRING}\)"


class ScriptSyntaxError(OTError):
    """The script is not well-formed; `line` and `column` (1-based) point into the script."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"edit script syntax error at line {line}, column {column}: {message}")
        self.line = line
        self.column = column


# Parser states: where in the grammar the next character is read.
_BETWEEN, _NAME_DONE, _ARG, _NUMBER, _STRING, _CLOSE, _END, _COMMENT = range(8)


class ScriptParser:
    """Incremental parser: `feed(chunk)` returns the ops completed by that chunk; `close()` checks the end."""

    def __init__(self) -> None:
        self._buf = ""
        self._pos = 0  # next unread index into _buf
        self._state = _BETWEEN
        self._opened_bracket = False
        self._seen_op = False
        self._name = ""
        self._token_start = 0  # where the current op's name starts, for error positions
        self._arg_start = 0  # where the current number or string literal starts
        self._string_scan = 0  # how far the current string literal has been scanned
        self._after_comment = _BETWEEN  # the state a `#` comment returns to
        self.ops: list[Op] = []

    @property
    def partial_insert(self) -> str | None:
        """Decoded text of an `insert("…` whose closing quote has not arrived yet, else None."""
        if self._state != _STRING or self._name != "insert":
            return None
        return _decode_prefix(self._buf[self._arg_start + 1 : self._pos])

    @property
    def in_progress(self) -> tuple[str, str] | None:
        """(op name, decoded text so far) while any quoted argument is being written, else None."""
        if self._state != _STRING:
            return None
        return self._name, _decode_prefix(self._buf[self._arg_start + 1 : self._pos])

    @property
    def op_name(self) -> str:
        """The name of the op being written once its name is complete, else ""."""
        return self._name if self._state not in (_BETWEEN, _END, _COMMENT) else ""

    @property
    def partial_count(self) -> str | None:
        """Digits of a count still being written (the next character may add more), else None."""
        return self._buf[self._arg_start : self._pos] if self._state == _NUMBER else None

    @property
    def between_ops(self) -> bool:
        """Whether the text so far ends between operations (no name, argument or comment open)."""
        return self._state in (_BETWEEN, _END) and self._pos == len(self._buf)

    @property
    def text(self) -> str:
        """Everything fed so far."""
        return self._buf

    @property
    def in_parentheses(self) -> bool:
        """Whether the text ends inside an op's parentheses or before its `(`, outside its argument."""
        return self._state in (_NAME_DONE, _ARG, _CLOSE)

    @property
    def in_comment(self) -> bool:
        return self._state == _COMMENT

    @property
    def in_escape(self) -> bool:
        """Whether a string literal ends in an escape still being written (`\\` or `\\u12`)."""
        return self._state == _STRING and self._pos < len(self._buf)

    @property
    def pending_escape(self) -> str:
        """The escape a string literal ends in while it is being written (`\\`, `\\u0`), else ""."""
        return self._buf[self._pos :] if self.in_escape else ""

    @property
    def pending_op(self) -> Op | None:
        """The op whose argument is complete but whose `)` has not been read yet, else None (also when the
        argument is bad: the `)` will say so)."""
        if self._state != _CLOSE:
            return None
        try:
            return self._make_op(self._buf[self._arg_start : self._pos].rstrip())
        except ScriptSyntaxError:
            return None

    def fork(self) -> ScriptParser:
        """An independent copy that has read the same text (to try a continuation without committing to it)."""
        copy = object.__new__(ScriptParser)
        copy.__dict__.update(self.__dict__)
        copy.ops = list(self.ops)
        return copy

    def feed(self, chunk: str) -> list[Op]:
        self._buf += chunk
        done: list[Op] = []
        while self._pos < len(self._buf):
            op = self._step()
            if isinstance(op, _NeedMore):
                break
            if op is not None:
                self.ops.append(op)
                done.append(op)
        return done

    def close(self) -> list[Op]:
        """End of input: the script must not stop inside an operation or an open `[`."""
        if self._state in (_NAME_DONE, _ARG, _NUMBER, _STRING, _CLOSE):
            what = "string literal" if self._state == _STRING else f"{self._name or 'operation'}(…)"
            raise self._error(f"script ends inside an unfinished {what}", self._token_start)
        if self._state == _BETWEEN and self._pos < len(self._buf):
            raise self._error("script ends inside an operation name", self._pos)
        if self._state == _COMMENT:
            self._state = self._after_comment
        if self._opened_bracket and self._state != _END:
            raise self._error("missing closing ']'", len(self._buf))
        return self.ops

    # -- the state machine -------------------------------------------------------------------------

    def _step(self) -> Op | _NeedMore | None:
        buf, pos, state = self._buf, self._pos, self._state
        ch = buf[pos]
        if state == _COMMENT:
            return self._skip_comment()
        if state == _END:
            if ch.isspace():
                self._pos += 1
                return None
            if ch == "#":
                return self._skip_comment()
            raise self._error(f"unexpected {ch!r} after the closing ']'", pos)
        if state == _BETWEEN:
            if ch.isspace() or ch == ",":
                self._pos += 1
                return None
            if ch == "#":
                return self._skip_comment()
            if ch == "[" and not self._seen_op and not self._opened_bracket:
                self._opened_bracket = True
                self._pos += 1
                return None
            if ch == "]" and self._opened_bracket:
                self._state = _END
                self._pos += 1
                return None
            match = _NAME.match(buf, pos)
            if not match:
                raise self._error(f"expected retain(…), delete(…) or insert(…), found {ch!r}", pos)
            if match.end() == len(buf):
                if not any(op.startswith(match.group()) for op in OP_NAMES):
                    raise self._error(f"unknown operation {match.group()!r}…; expected retain, delete or insert", pos)
                return _NEED_MORE  # the name may continue in the next chunk
            name = match.group()
            if name not in OP_NAMES:
                raise self._error(f"unknown operation {name!r}; expected retain, delete or insert", pos)
            self._name, self._token_start = name, pos
            self._state, self._pos = _NAME_DONE, match.end()
            return None
        if state == _NAME_DONE:
            if ch.isspace():
                self._pos += 1
                return None
            if ch != "(":
                raise self._error(f"expected '(' after {self._name}, found {ch!r}", pos)
            self._state, self._pos = _ARG, pos + 1
            return None
        if state == _ARG:
            if ch.isspace():
                self._pos += 1
                return None
            if ch == '"':
                self._state, self._arg_start, self._string_scan = _STRING, pos, pos + 1
                self._pos = pos + 1
                return None
            if "0" <= ch <= "9":
                if self._name == "insert":
                    raise self._error('insert takes a quoted string, e.g. insert("text")', pos)
                self._state, self._arg_start = _NUMBER, pos
                return None
            if ch == "-":
                raise self._error(f"{self._name} count must not be negative", pos)
            raise self._error(f"{self._name} expects a count or a JSON string, found {ch!r}", pos)
        if state == _NUMBER:
            match = _DIGITS.match(buf, pos)
            end = match.end() if match else pos
            if end == len(buf):
                self._pos = end
                return _NEED_MORE
            self._state, self._pos = _CLOSE, end
            return None
        if state == _STRING:
            return self._scan_string()
        # _CLOSE: the argument is complete, expect ')'
        if ch.isspace():
            self._pos += 1
            return None
        if ch != ")":
            raise self._error(f"expected ')' to close {self._name}(…), found {ch!r}", pos)
        self._pos = pos + 1
        self._state = _BETWEEN
        self._seen_op = True
        return self._make_op(self._buf[self._arg_start : pos].rstrip())

    def _scan_string(self) -> Op | _NeedMore | None:
        buf = self._buf
        pos = self._string_scan
        while True:
            match = _STRING_STOP.search(buf, pos)
            if match is None:
                self._pos = self._string_scan = len(buf)
                return _NEED_MORE
            if match.group() == "\\":
                size = _escape_size(buf, match.end())
                if size is None:
                    self._pos = self._string_scan = match.start()
                    return _NEED_MORE  # the escaped character has not arrived yet
                if size == 0:
                    escape = buf[match.start() : match.end() + (5 if buf[match.end()] == "u" else 1)]
                    raise self._error(
                        f"bad string literal: invalid escape {escape!r}; JSON strings take \\\\ \\\" \\n \\t \\r "
                        "\\b \\f \\/ and \\uXXXX",
                        match.start(),
                    )
                pos = match.end() + size
                continue
            self._state = _CLOSE
            self._pos = self._string_scan = match.end()
            return None

    def _make_op(self, literal: str) -> Op:
        if literal.startswith('"'):
            try:
                text = json.loads(literal, strict=False)
            except json.JSONDecodeError as exc:
                raise self._error(f"bad string literal: {exc.msg}", self._arg_start + exc.pos) from None
            if half := _SURROGATE.search(text):
                raise self._error(
                    f"the string has half of a UTF-16 surrogate pair (\\u{ord(half.group()):04x}) without its other "
                    "half; write the character itself, or both halves (e.g. \\ud83d\\ude00)",
                    self._arg_start,
                )
            if self._name == "insert":
                return Insert(text)
            return Retain(len(text), text) if self._name == "retain" else Delete(len(text), text)
        if len(literal) > MAX_COUNT_DIGITS:
            raise self._error(
                f"count too large ({len(literal)} digits); counts are code points in the file, so use a quoted "
                'retain("…") to reach text far away',
                self._arg_start,
            )
        count = int(literal)
        return Retain(count) if self._name == "retain" else Delete(count)

    def _skip_comment(self) -> _NeedMore | None:
        if self._state != _COMMENT:
            self._after_comment, self._state = self._state, _COMMENT
        end = self._buf.find("\n", self._pos)
        if end < 0:
            self._pos = len(self._buf)
            return _NEED_MORE
        self._pos, self._state = end + 1, self._after_comment
        return None

    def _error(self, message: str, index: int) -> ScriptSyntaxError:
        line = self._buf.count("\n", 0, index) + 1
        column = index - (self._buf.rfind("\n", 0, index) + 1) + 1
        return ScriptSyntaxError(message, line, column)


JSON_SIMPLE_ESCAPES = frozenset('"\\/bfnrt')  # the characters after a backslash that end an escape
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _escape_size(buf: str, at: int) -> int | None:
    """Characters after a backslash at `at - 1` that its escape takes: 1, or 5 for \\uXXXX; 0 when it is no JSON
    escape; None when the buffer ends before that can be told."""
    if at == len(buf):
        return None
    if buf[at] in JSON_SIMPLE_ESCAPES:
        return 1
    if buf[at] != "u":
        return 0
    digits = buf[at + 1 : at + 5]
    if not all(ch in HEX_DIGITS for ch in digits):
        return 0
    return 5 if len(digits) == 4 else None


class _NeedMore:
    """What `_step` returns when the op is not complete in the buffer yet."""


_NEED_MORE = _NeedMore()


def _decode_prefix(raw: str) -> str:
    """Decode the body of an unfinished JSON string, dropping an escape cut off at its end."""
    for cut in range(min(len(raw), 6) + 1):
        try:
            return json.loads(f'"{raw[: len(raw) - cut]}"', strict=False)
        except json.JSONDecodeError:
            continue
    return raw


def parse_script(text: str) -> list[Op]:
    """Parse a whole script; raises ScriptSyntaxError with line and column on malformed input."""
    parser = ScriptParser()
    parser.feed(text)
    return parser.close()


def iter_ops(chunks: Iterator[str]) -> Iterator[Op]:
    """Ops from a stream of text chunks, each as soon as it is complete."""
    parser = ScriptParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    parser.close()
