"""Edit-aware drafting: predict what a model writing an edit script will write next, from the source.

While a model writes an OT edit script (`tools.ot_script`) against a file, most of what it writes is in
that file. This module follows the script as it streams, keeps the cursor in the source, and proposes
text:
- inside a quoted `delete("…` or `retain("…`: the source text at the cursor (the quote copies it);
- inside an `insert("…`: the rest of the source line that the line being inserted is copying, found by
  the longest suffix of the inserted text that occurs in the source near the cursor.
Proposals are JSON-escaped, as they appear inside the script's string literals. The engine turns them into
draft tokens; the target model verifies them, so a wrong proposal costs speed, never correctness.
"""

from __future__ import annotations

import json

from tools.ot import Delete, Insert, Retain
from tools.ot_script import ScriptParser, ScriptSyntaxError

SEARCH_RADIUS = 2000  # code points around the cursor searched for the text being copied
MIN_SUFFIX = 4  # shortest tail of an insert that is looked up in the source


class CursorDrafter:
    """Follows one edit script as it is generated; `propose(script_so_far)` gives the predicted next text."""

    def __init__(self, source: str, max_chars: int = 96) -> None:
        self.source = source
        self.max_chars = max_chars
        self._parser = ScriptParser()
        self._fed = 0  # characters of the script already fed to the parser
        self._cursor = 0  # source offset after the completed ops
        self._broken = False  # the output stopped being a script: propose nothing

    def propose(self, script_so_far: str) -> str:
        """JSON-escaped text the model is likely to write next ("" when there is no good guess)."""
        if self._broken or len(script_so_far) < self._fed:
            return ""
        try:
            for op in self._parser.feed(script_so_far[self._fed :]):
                self._advance(op)
        except ScriptSyntaxError:
            self._broken = True
            return ""
        self._fed = len(script_so_far)
        in_progress = self._parser.in_progress
        if in_progress is None:
            return ""
        name, text = in_progress
        if name == "insert":
            return _escape(self._line_continuation(text))
        return _escape(self._quote_continuation(text))

    def _advance(self, op: Retain | Delete | Insert) -> None:
        if isinstance(op, Insert):
            return
        if op.text is not None:
            found = _nearest(self.source, op.text, self._cursor)
            if found is not None:
                self._cursor = found
        self._cursor += op.n

    def _quote_continuation(self, typed: str) -> str:
        """The source text that follows what the quote has copied so far."""
        start = _nearest(self.source, typed, self._cursor) if typed else self._cursor
        if start is None:
            return ""
        end = start + len(typed)
        return self.source[end : end + self.max_chars]

    def _line_continuation(self, typed: str) -> str:
        """The rest of the source line that the insert is copying, if its tail occurs in the source."""
        for size in range(min(len(typed), 64), MIN_SUFFIX - 1, -1):
            tail = typed[-size:]
            found = _nearest(self.source, tail, self._cursor)
            if found is not None:
                rest = self.source[found + size :]
                line_end = rest.find("\n")
                return rest[: line_end + 1 if line_end >= 0 else len(rest)][: self.max_chars]
        return ""


def _nearest(source: str, text: str, cursor: int) -> int | None:
    """Start of the occurrence of `text` nearest to `cursor` within SEARCH_RADIUS, else None."""
    lo, hi = max(0, cursor - SEARCH_RADIUS), min(len(source), cursor + SEARCH_RADIUS + len(text))
    after = source.find(text, cursor, hi)
    before = source.rfind(text, lo, cursor + len(text) - 1) if cursor > lo else -1
    candidates = [at for at in (after, before) if at >= 0]
    return min(candidates, key=lambda at: abs(at - cursor)) if candidates else None


def _escape(text: str) -> str:
    """Text as it appears inside a JSON string literal (without the quotes)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]
