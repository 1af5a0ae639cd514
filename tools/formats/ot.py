"""The OT edit scripts (`tools.ot`), in three forms, applied by the agent's tolerant applier (`tools.patch.apply_edit`,
syntax check included):

- `ot`: the edit script of `tools.ot.ot_diff` (quoted deletes and anchors), one op per line;
- `ot-counts`: the same script with counts only;
- `ot-lines`: a count-free OT script of whole lines (`line_script`): per changed region, the old lines quoted in a
  `delete("…")` and the new lines in an `insert("…")` after it, with a quoted `retain("…")` of the text just before
  them only where the delete alone would not land there (a pure insertion quotes the start of the text after it).
  Nothing in it is counted, and what it quotes is whole source lines, which drafters copy from the file.

The mistakes models make in them: a count-only retain off by ±1..3 (`ot`, `ot-counts`; `trials` different ones,
chosen with the seed, labelled by the op it comes before); for line scripts, which have nothing to miscount, one
quoted retain left out (`trials` different ones), as a model that does not know which quotes are unique writes it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from difflib import SequenceMatcher
from functools import partial

from tools.formats.base import (
    EXAMPLE_TASK,
    AgentPrompt,
    Format,
    FormatError,
    Perturbations,
    Role,
    example_block,
    register,
)
from tools.grounding.script import ScriptFollower
from tools.ot import (
    Delete,
    Insert,
    Op,
    OTError,
    Retain,
    format_script,
    is_line_insert,
    is_quoted,
    ot_diff,
    quoted_runs,
)
from tools.ot_script import parse_script
from tools.patch import apply_edit, quote_candidates
from tools.text_files import text_lines

MISCOUNTS = (-3, -2, -1, 1, 2, 3)  # how far off a miscounted retain is
EDIT_SCRIPT = (
    "Reply with an edit script: a cursor walks the file from its start, one operation per line. retain(N) or "
    'retain("text") keeps text, delete("text") or delete(N) removes it, insert("text") adds text at the cursor. '
    "Strings are JSON strings; counts are Unicode code points. Whatever the script does not reach is kept."
)


# ---- the agent's prompt ----------------------------------------------------------------------------------------

TOOL_ENTRY = r'''Change a file with an edit script (explained below):

```edit src/app.py
retain("def main():\n")
insert("    setup()\n")
```'''
OPERATIONS = r'''# Edit scripts

Never rewrite a whole file to change part of it. An edit script walks through the file from its start
with a cursor, one operation per line:

    retain(N)          keep the next N characters
    retain("text")     keep exactly this text
    delete("text")     remove exactly this text
    delete(N)          remove the next N characters
    insert("text")     add text at the cursor

Strings are JSON strings: write a newline as \n, a quote as \", a backslash as \\. Counts are Unicode
code points (characters), and a newline counts as 1. Whatever the script does not reach stays as it is,
so stop after your last change.'''
ADVICE = r'''Counting is easy to get wrong, so let quoted text do the work:

- Quote what you delete: `delete("old text")`, not `delete(8)`.
- To get to a change, write `retain(N)` with your best count of the characters from the cursor to it,
  then quote a little text that is there, right before the change, and unique in the file:
  `retain(45)` then `retain("return total(items) / ")`. When the count is off, the quoted text puts the
  cursor right. A quoted retain says "this text is here", so always put a count before it, except at
  the very start of a script, where a quoted retain alone finds its place.
- Insert whole lines at the start of a line, ending with \n.
- Changes a line or so apart are one change: delete the whole stretch and insert its new text, rather
  than counting your way between them.
- Several changes in one file go into one script, in file order.'''
WORKED_REPLY = r'''```edit stats.py
retain("def total(items):\n")
insert("    \"\"\"Sum of the items.\"\"\"\n")
retain(45)
retain("return total(items) / ")
delete("len(items)")
insert("max(len(items), 1)")
```

The first line keeps the first line of the file, the insert adds the docstring after it, `retain(45)`
skips to the last line's `return` (45 characters further), and the quoted text checks the place.'''
CLOSING = r'''The result comes back as a diff. If the edit cannot be placed or would break the file's syntax, the file
is left unchanged and the message says exactly what went wrong: fix the script and send it again. Read a
file again before another edit when you are unsure of its current text.'''


def _script_prompt(rule: str, example: str) -> AgentPrompt:
    """The agent's prompt for an OT script: the edit language, `rule` (how to write this form of it), the worked
    example's reply `example`, and what comes back."""
    return AgentPrompt(
        doing="editing them with edit scripts",
        read="Read a file: its exact text, which is what edit scripts count.",
        tool=TOOL_ENTRY,
        section=f"{OPERATIONS}\n\n{rule}\n\n{EXAMPLE_TASK}\n\n{example}\n\n{CLOSING}",
        tool_description="Edit a file with an edit script (retain/delete/insert operations).",
        body_description="the edit script",
    )


# ---- line-granular OT ----------------------------------------------------------------------------------------


Region = tuple[list[Op], int, int]  # a change's ops, and the applier's cursor and last-edit end after them


def line_script(before: str, after: str) -> list[Op]:
    """A count-free script of whole lines turning `before` into `after`, each quote placed by the applier
    (`tools.patch`) exactly where it belongs."""
    old_lines, new_lines = text_lines(before), text_lines(after)
    offsets = [0]
    for line in old_lines:
        offsets.append(offsets[-1] + len(line))
    opcodes = SequenceMatcher(None, old_lines, new_lines, autojunk=False).get_opcodes()
    changes = [(i1, i2, j1, j2) for tag, i1, i2, j1, j2 in opcodes if tag != "equal"]
    ops: list[Op] = []
    pos = done = 0  # the applier's cursor and the end of the last edit, as offsets into `before`
    for number, (i1, i2, j1, j2) in enumerate(changes):
        last = number == len(changes) - 1
        limit = len(before) if last else offsets[changes[number + 1][0]]  # where the next change starts
        start, end, new = offsets[i1], offsets[i2], "".join(new_lines[j1:j2])
        forms: list[Region | None] = [_context_form(before, start, end, new, pos, done, last)]
        if start == end and start < len(before) and not (ops and isinstance(ops[-1], Delete) and start != pos):
            # (an insert right after a delete goes where the deleted text was, not before the quote after it)
            forms.append(_insert_before(before, start, new, pos, done, limit))
        region_ops, pos, done = min((form for form in forms if form), key=_quoted_size)
        ops += region_ops
    return ops


def _context_form(doc: str, start: int, end: int, new: str, pos: int, done: int, last: bool) -> Region:
    """doc[start:end] (whole lines) deleted and `new` inserted after it, behind the shortest quote of the text
    before them that makes the first quote land there. An insertion followed by another change quotes the
    character after it: an insert before a quoted op would go where that op is found."""
    deleted = [_quote(Delete, doc[start:end])] if end > start else []
    inserted = [Insert(new)] if new else []
    closing = [_quote(Retain, doc[start])] if not deleted and not last else []
    for size in range(start - pos + 1):
        ops = ([_quote(Retain, doc[start - size : start])] if size else []) + deleted + inserted
        # an insert with nothing quoted before it goes at the cursor
        placed = start == pos if isinstance(ops[0], Insert) else _lands(doc, ops, 0, pos, done, start - size)
        if placed:
            return ops + closing, end + len(closing), end
    raise AssertionError("a retain of everything since the cursor starts at the cursor")  # pragma: no cover


def _insert_before(doc: str, start: int, new: str, pos: int, done: int, limit: int) -> Region | None:
    """An insertion at `start` placed by the shortest quote of the text after it (up to `limit`) that lands
    there alone; None if none does."""
    for size in range(1, limit - start + 1):
        ops = [Insert(new), _quote(Retain, doc[start : start + size])]
        if _lands(doc, ops, 1, pos, done, start):
            return ops, start + size, start
    return None


def _quoted_size(region: Region) -> int:
    """The code points a form quotes from the file: what it costs beyond the change itself."""
    return sum(len(op.text) for op in region[0] if isinstance(op, Retain) and op.text is not None)


def _quote(kind: type[Retain] | type[Delete], text: str) -> Retain | Delete:
    return kind(len(text), text)


def _lands(doc: str, ops: list[Op], index: int, pos: int, done: int, start: int) -> bool:
    """Whether the applier places the quoted `ops[index]` at `start` and nowhere else it could choose: the
    script's own quotes after it are left out, since a later change need not follow it back to back."""
    _, found = quote_candidates(doc, quoted_runs(ops, index), pos, done)
    return found == [start]


def apply_script(before: str, output: str, language: str | None) -> str:
    """The file after the script `output`, placed by the tolerant applier; FormatError where it refuses."""
    try:
        return apply_edit(before, parse_script(output), language).after
    except OTError as exc:
        raise FormatError(str(exc)) from exc


# ---- model-like perturbations ----------------------------------------------------------------------------------


def miscounted_scripts(output: str, seed: str, trials: int) -> Perturbations:
    """`trials` different count-only retains of the script, each off by ±1..3, labelled by what follows it."""
    rng = random.Random(seed)
    ops = parse_script(output)
    counted = [(i, op.n) for i, op in enumerate(ops[:-1]) if isinstance(op, Retain) and op.text is None]
    found = []
    for i, count in sorted(rng.sample(counted, min(trials, len(counted)))):
        delta = rng.choice([d for d in MISCOUNTS if count + d >= 0])
        script = [*ops[:i], Retain(count + delta), *ops[i + 1:]]
        found.append((f"miscount before {_what(ops[i + 1 :])}", format_script(script)))
    return found


def scripts_without_a_retain(output: str, seed: str, trials: int) -> Perturbations:
    """A count-free script has nothing to miscount; its mistake is a missing anchor, labelled by where it was."""
    rng = random.Random(seed)
    ops = parse_script(output)
    quoted = [i for i, op in enumerate(ops) if isinstance(op, Retain) and op.text is not None]
    found = []
    for i in sorted(rng.sample(quoted, min(trials, len(quoted)))):
        where = "after an insert" if i and isinstance(ops[i - 1], Insert) else f"before {_article(ops[i + 1])}"
        found.append((f"no retain {where}", format_script([*ops[:i], *ops[i + 1 :]])))
    return found


def _article(op: Op) -> str:
    return "a delete" if isinstance(op, Delete) else "an insert"


def _what(following: list[Op]) -> str:
    """What a miscounted retain comes before: the applier can re-anchor on quoted text (after any inserts)
    and snap whole-line inserts to line boundaries, but has nothing to go on for an inline insert or a
    count-only delete."""
    op = following[0]
    if is_quoted(next((o for o in following if not isinstance(o, Insert)), None)):
        return "quoted text"
    if isinstance(op, Insert):
        return "line insert" if is_line_insert(op) else "inline insert"
    return "count-only delete"


def _script_format(
    name: str,
    instruction: str,
    script: Callable[[str, str], list[Op]],
    perturb: Callable[[str, str, int], Perturbations],
    rule: str,
    example: str | None = None,
    role: Role | None = None,
    quick: bool = False,
) -> Format:
    """A format whose output is an edit script (`script(before, after)`), one op per line in an ```edit block,
    asked for with the edit language's description and `instruction`, applied by the tolerant applier and grounded
    by `ScriptFollower`; the agent teaches it with `rule` and the worked example's reply `example` (None: the format's
    own reference)."""

    def reference(before: str, after: str) -> str:
        return format_script(script(before, after))

    return Format(
        name=name,
        fence="edit",
        instruction=EDIT_SCRIPT + instruction,
        reference=reference,
        apply=apply_script,
        perturb=perturb,
        follower=ScriptFollower,
        role=role,
        quick=quick,
        prompt=_script_prompt(rule, example or example_block("edit", reference)),
        edit_script=True,
    )


LINES_RULE = (
    "Work in whole lines and without counts: delete(\"…\") the old lines, then insert(\"…\") the new ones; "
    "where the deleted lines are not unique, first quote the end of the line before them with retain(\"…\"); "
    "to add lines without deleting any, insert them, then quote the start of the line after them."
)

register(_script_format("ot", " Quote the text you delete, and a little text right before each change.",
                        partial(ot_diff, quoted=True), miscounted_scripts, ADVICE, WORKED_REPLY, role="subject",
                        quick=True))
register(_script_format("ot-counts", " Use counts only.", partial(ot_diff, quoted=False), miscounted_scripts,
                        "Use counts only: retain(N) and delete(N), counted with care; several changes in one file "
                        "go into one script, in file order."))
register(_script_format("ot-lines", " " + LINES_RULE, line_script, scripts_without_a_retain, LINES_RULE,
                        role="subject"))
