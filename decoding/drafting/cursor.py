"""Edit-aware drafting: predict what a model writing an edit script will write next, from the source.

While a model writes an OT edit script (`tools.ot_script`) against a file, most of what it writes is in
that file. This module follows the script as it streams, keeps the cursor in the source, and proposes
text:
- inside a quoted `delete("…` or `retain("…`: the source text at the cursor (the quote copies it);
- inside an `insert("…` right after a `delete("…")`: the deleted text, which a replacement mostly repeats: its
  continuation while the insert still matches it, else what follows the longest tail of the inserted text
  (at least MIN_RESYNC code points) found in it, the occurrence nearest the insert's own position;
- otherwise inside an `insert("…`, or when the deleted text has no match: the source that the insert is
  copying, found by the longest suffix of the inserted text that occurs in the source near the cursor;
- between ops: after a quoted delete, the insert that replaces it (`insert("` and the deleted text);
  after a retain, the delete of the source at the cursor (the change it gets to, most often a replacement), or,
  once a retain is begun after a count, a quoted anchor of that source;
  otherwise the op a script usually writes next (`NEXT_OP`), and the rest of an op name once begun;
- in a count: its closing `)` and the op after it, for a retain the delete of the source the count gets to if it
  ends there (each digit is a surprise, but the count's end need not be).
Proposals are JSON-escaped, as they appear inside the script's string literals (going on from an escape the
script has begun), and run on past line ends: a quote, a replacement or a copied line that goes on into the next
line is drafted whole, and where the text ends is a surprise wherever that is (stopping at the line's end only
saved the verify rows of a wrong guess, at a forward per line of every longer one).

`CursorTokenDrafter` is the engine's face of it: it finds the script being written in the decoded context (after
the last ```edit fence or a line holding only `[`), turns the proposal into draft tokens, and fills the rest of the
draft by prompt lookup. The target model verifies every draft, so a wrong proposal costs speed, never correctness.
"""

from __future__ import annotations

import json
import re

from decoding.drafting.base import Draft, DraftContext, NgramDrafter
from tools.ot import Delete, Insert, Retain
from tools.ot_script import OP_NAMES, ScriptParser, ScriptSyntaxError

SEARCH_RADIUS = 2000  # code points around the cursor searched for the text being copied
DECODE_OVERLAP = 4  # tokens decoded again with each new step's tokens, so a boundary decodes as in the whole
MIN_SUFFIX = 4  # shortest tail of an insert that is looked up in the source
MIN_RESYNC = 3  # shortest tail of an insert that is looked up in the text deleted just before it
MAX_PROPOSAL_TOKENS = 32  # a proposal is drafted whole up to this many tokens, whatever the adaptive draft length
PROPOSAL_CHARS = 128  # code points of the file proposed at most (about MAX_PROPOSAL_TOKENS tokens of code)
# The op a script usually writes after each kind of op (None: at its start), in the taught form: a count to get to a
# change, then the delete of what it replaces (or a quoted anchor, or an insert); after a delete, its replacement;
# after an insert, the count to the next change.
NEXT_OP = {None: "retain", "retain": "delete", "delete": "insert", "insert": "retain"}


class CursorDrafter:
    """Follows one edit script as it is generated; `propose(script_so_far)` gives the predicted next text."""

    def __init__(self, source: str, max_chars: int = PROPOSAL_CHARS) -> None:
        self.source = source
        self.max_chars = max_chars
        self._parser = ScriptParser()
        self._fed = 0  # characters of the script already fed to the parser
        self._cursor = 0  # source offset after the completed ops
        self._broken = False  # the output stopped being a script: propose nothing
        self._last: Retain | Delete | Insert | None = None  # the last completed op

    @property
    def _deleted(self) -> str | None:
        """The text of the last op when it is a quoted delete."""
        return self._last.text if isinstance(self._last, Delete) else None

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
        count = self._parser.partial_count
        if count is not None:  # each digit is a surprise, but the count's end need not be, nor the op after it
            # the delete of the source the count gets to, if it ends here (a count longer than the file's length
            # in digits gets past its end: not read as a number, however many digits a model writes)
            if self._parser.op_name == "retain" and len(count) <= len(str(len(self.source))):
                at = self._cursor + int(count)
                return ')\ndelete("' + _escape(self.source[at : at + self.max_chars])
            return ")\n" + NEXT_OP[self._parser.op_name] + '("'
        if in_progress is None:
            return self._next_op(script_so_far)
        name, text = in_progress
        if name == "insert":
            replaced = _replacement_continuation(text, self._deleted) if self._deleted else ""
            proposal = _escape(replaced[: self.max_chars] or self._copied_continuation(text) or self._new_line(text))
        else:
            proposal = _escape(self._quote_continuation(text))
        if self._parser.in_escape:  # the script ends inside an escape (`\`): the proposal must go on from it
            partial = script_so_far[script_so_far.rfind("\\") :]
            return proposal.removeprefix(partial) if proposal.startswith(partial) else ""
        return proposal

    def _next_op(self, script_so_far: str) -> str:
        """The op usually written next (`NEXT_OP`), with the text it most likely quotes, spelled on from what the
        script has of it; once the script has begun another op's name, that op instead."""
        closed = script_so_far.rfind(")")
        written = script_so_far[closed + 1 :]
        last = None if self._last is None else type(self._last).__name__.lower()
        predicted = self._opening(NEXT_OP[last])
        spelled = predicted if last is None else "\n" + predicted
        if spelled.startswith(written):
            return spelled[len(written) :]
        begun = written.lstrip()
        if not begun:
            return ""
        for name in OP_NAMES:
            opening = self._opening(name)
            if opening.startswith(begun):
                return opening[len(begun) :]
        return ""

    def _opening(self, name: str) -> str:
        """How op `name` most likely begins here: a delete quotes the source at the cursor; an insert after a
        quoted delete repeats the deleted text, otherwise it starts a line as the source's does; a retain counts,
        except right after a count (two counts in a row would be one), where it quotes the source at the cursor: an
        anchor before the change."""
        counted = isinstance(self._last, Retain) and self._last.text is None
        if name == "delete" or (name == "retain" and counted):
            return f'{name}("' + _escape(self._quote_continuation(""))
        if name == "insert":
            text = self._deleted[: self.max_chars] if self._deleted else self._new_line("")
            return 'insert("' + _escape(text)
        return "retain("

    def _advance(self, op: Retain | Delete | Insert) -> None:
        self._last = op
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

    def _new_line(self, typed: str) -> str:
        """At the start of an insert where a line starts or ends: the indentation its new line most likely has,
        that of the source line at the cursor (after a line break when the cursor is at a line's end)."""
        at_line_start = self._cursor == 0 or self.source[self._cursor - 1] == "\n"
        at_line_end = self.source.startswith("\n", self._cursor)
        if typed or not (at_line_start or at_line_end):
            return ""
        line_start = self.source.rfind("\n", 0, self._cursor) + 1
        line = self.source[line_start:].partition("\n")[0]
        indentation = line[: len(line) - len(line.lstrip(" \t"))]
        return "\n" + indentation if at_line_end else indentation

    def _copied_continuation(self, typed: str) -> str:
        """What follows the source that the insert is copying, if its tail occurs in the source."""
        for size in range(min(len(typed), 64), MIN_SUFFIX - 1, -1):
            tail = typed[-size:]
            found = _nearest(self.source, tail, self._cursor)
            if found is not None:
                return self.source[found + size : found + size + self.max_chars]
        return ""


def _replacement_continuation(typed: str, deleted: str) -> str:
    """What an insert replacing `deleted` writes next, the rest of the deleted text being repeated:
    the rest of `deleted` while the insert agrees with it, else what follows the longest tail of `typed` found
    in it (where the edit resumes copying after a change); "" when neither is there."""
    if deleted.startswith(typed):
        return deleted[len(typed) :]
    for size in range(min(len(typed), 64), MIN_RESYNC - 1, -1):
        tail = typed[-size:]
        ends = [at + size for at in _occurrences(deleted, tail)]
        if ends:
            end = min(ends, key=lambda end: abs(end - len(typed)))
            return deleted[end:]
    return ""


def _occurrences(text: str, part: str) -> list[int]:
    """Every start of `part` in `text`, overlapping ones included."""
    found, at = [], text.find(part)
    while at >= 0:
        found.append(at)
        at = text.find(part, at + 1)
    return found


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


# Where a script starts: after an ```edit fence line (the agent's text protocol) or a line that is only `[`.
_SCRIPT_START = re.compile(r"^(?:`{3,}edit[^\n]*|[ \t]*\[[ \t]*)\n", re.M)


class CursorTokenDrafter:
    """Edit-aware drafts for the engine: the cursor proposal as tokens, then prompt lookup for the rest.

    Outside an edit script, or with no source to follow (no prediction text), this is plain prompt lookup. One
    instance follows one generation: the context only grows between calls.
    """

    name = "cursor"

    def __init__(self, tokenizer, n_min: int = 2, n_max: int = 6) -> None:
        self.tokenizer = tokenizer
        self.lookup = NgramDrafter(n_min=n_min, n_max=n_max)
        self._source_ids: list[int] | None = None
        self._script_start = -1
        self._cursor: CursorDrafter | None = None
        self._decoded: tuple[int, str] = (0, "")  # (tokens decoded, their text): the context only grows

    def _text(self, tokens: list[int]) -> str:
        """The context as text, decoding only what is new since the last call (a few tokens overlap, since a
        token's text can depend on its neighbours); a full decode when the overlap does not line up."""
        seen, text = self._decoded
        start = max(0, seen - DECODE_OVERLAP)
        overlap = self.tokenizer.decode(tokens[start:seen], skip_special_tokens=True)
        fresh = self.tokenizer.decode(tokens[start:], skip_special_tokens=True)
        if seen <= len(tokens) and text.endswith(overlap) and fresh.startswith(overlap):
            text = text + fresh[len(overlap) :]
        else:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        self._decoded = (len(tokens), text)
        return text

    def propose(self, context: DraftContext, k: int) -> Draft:
        proposed = self._cursor_tokens(context)
        if len(proposed) > k:  # the script's syntax or the file's text: as long as the proposal, past a short k
            return Draft(proposed[: min(MAX_PROPOSAL_TOKENS, context.limit or MAX_PROPOSAL_TOKENS)], self_sized=True)
        tokens = proposed
        if len(tokens) < k:
            rest = DraftContext(tokens=context.tokens + tokens, sources=context.sources)
            tokens += self.lookup.propose(rest, k - len(tokens)).tokens
        return Draft(tokens)

    def _cursor_tokens(self, context: DraftContext) -> list[int]:
        if not context.sources:
            return []
        text = self._text(context.tokens)
        if text.endswith("\ufffd"):  # the last token ends inside a UTF-8 sequence
            return []
        drafter = self._follow(context.sources[0], context.source_text, text)
        if drafter is None:
            return []
        proposal = drafter.propose(text[self._script_start :])
        return self._continuation_ids(context.tokens[-1], proposal) if proposal else []

    def _follow(self, source_ids: list[int], source_text: str | None, text: str) -> CursorDrafter | None:
        """The CursorDrafter of the script being written in `text`, started afresh at each new script."""
        starts = list(_SCRIPT_START.finditer(text))
        if not starts:
            return None
        start = starts[-1].end()
        if self._cursor is None or start != self._script_start or source_ids is not self._source_ids:
            if source_text is None:
                source_text = self.tokenizer.decode(source_ids, skip_special_tokens=True)
            self._cursor, self._script_start, self._source_ids = CursorDrafter(source_text), start, source_ids
        return self._cursor

    def _continuation_ids(self, last: int, proposal: str) -> list[int]:
        """Tokens of `proposal` as the model would write them after token `last`.

        Tokenized together with `last` where that keeps `last` whole (so the first proposed token merges as the
        model's would); where `last` ends mid-token (`op` before `en(`), the proposal is tokenized on its own.
        """
        encode = self.tokenizer
        ids = encode(self.tokenizer.decode([last]) + proposal, add_special_tokens=False).input_ids
        return ids[1:] if ids and ids[0] == last else encode(proposal, add_special_tokens=False).input_ids
