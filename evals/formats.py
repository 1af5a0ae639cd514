"""Edit formats, model-free: the minimal correct output for an edit in each format, and each format's applier.

Formats (what a model would emit for one file; the file's name and code fences are left out of every
format, since they cost the same few tokens in each):

- `whole`: the file after the edit;
- `search-replace`: Aider-style `<<<<<<< SEARCH` / `=======` / `>>>>>>> REPLACE` blocks, each with the fewest
  context lines that make its SEARCH text unique where it is applied;
- `udiff`: unified-diff hunks without line numbers (`@@ ... @@`, as Aider asks models to write them), with
  the same minimal context;
- `ot`: the edit script of `tools.ot.ot_diff` (quoted deletes and anchors), one op per line;
- `ot-counts`: the same script with counts only;
- `ot-lines`: a count-free OT script of whole lines (`line_script`): per changed region, the old lines quoted in a
  `delete("…")` and the new lines in an `insert("…")` after it, with a quoted `retain("…")` of the text just before
  them only where the delete alone would not land there (a pure insertion quotes the start of the text after it).
  Nothing in it is counted, and what it quotes is whole source lines, which drafters copy from the file.

The appliers are the ones each format relies on in practice: search/replace looks for the old text line
by line, exactly, then with a uniform indentation offset and trailing whitespace ignored (Aider's steps),
and replaces the first match; udiff hunks go through the same search (Aider adds fuzzy fallbacks for
udiff, sub-hunks and diff-match-patch, which are not reproduced here); OT scripts go through the agent's
tolerant applier (`tools.patch.apply_edit`, syntax check included). `perturbations` gives model-like mistakes for each
format, so the evals can report how well each one survives them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from difflib import SequenceMatcher

from tools.formats.base import FormatError
from tools.formats.lines import DIVIDER, REPLACE, SEARCH
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

FORMATS = ("whole", "search-replace", "udiff", "ot", "ot-counts", "ot-lines")
PERTURBABLE = ("search-replace", "udiff", "ot", "ot-counts", "ot-lines")
MISCOUNTS = (-3, -2, -1, 1, 2, 3)



@dataclass
class Block:
    """One change region: `lines` are (sign, line) pairs, sign " " (context), "-" (old) or "+" (new)."""

    lines: list[tuple[str, str]]

    @property
    def old(self) -> list[str]:
        return [line for sign, line in self.lines if sign != "+"]

    @property
    def new(self) -> list[str]:
        return [line for sign, line in self.lines if sign != "-"]


# ---- minimal blocks ------------------------------------------------------------------------------------------


def minimal_blocks(before: str, after: str) -> list[Block]:
    """Line-level change regions, each grown by the fewest context lines that make its old text unique in the
    document it is applied to (earlier blocks already applied); regions whose context would overlap merge."""
    old_lines, new_lines = text_lines(before), text_lines(after)
    opcodes = SequenceMatcher(None, old_lines, new_lines, autojunk=False).get_opcodes()
    changes = [(i1, i2, j1, j2) for tag, i1, i2, j1, j2 in opcodes if tag != "equal"]
    to_new = _index_map(opcodes, len(old_lines), len(new_lines))
    regions: list[tuple[int, int, list[tuple[int, int, int, int]]]] = []  # (start, end, changes), old indices
    for change in changes:
        start, end, members = change[0], change[1], [change]
        while True:
            floor = regions[-1][1] if regions else 0
            grown = _grow(old_lines, new_lines, to_new, start, end, floor) if start >= floor else None
            if grown is not None:
                break
            # it reaches into the previous region, or is unique only with context from it: merge the two
            previous_start, previous_end, previous_members = regions.pop()
            start, end, members = previous_start, max(end, previous_end), previous_members + members
        regions.append((*grown, members))
    return [_block(old_lines, new_lines, start, end, members) for start, end, members in regions]


def _index_map(opcodes, old_len: int, new_len: int) -> Callable[[int], int]:
    """Old line index → new line index, for indices at the edge of or inside unchanged runs."""
    table = {0: 0, old_len: new_len}
    for tag, i1, i2, j1, _ in opcodes:
        if tag == "equal":
            for offset in range(i2 - i1 + 1):
                table[i1 + offset] = j1 + offset
    return table.__getitem__


def _grow(old_lines: list[str], new_lines: list[str], to_new, start: int, end: int, floor: int):
    """The smallest widening [lo, hi) of old lines [start, end), with lo >= floor, whose text has a non-blank
    line and occurs exactly once in the document as it is when this block applies (earlier blocks applied);
    None if there is none."""
    for total in range(len(old_lines) + 1):
        for above in range(total, -1, -1):
            lo, hi = start - above, end + (total - above)
            if lo < floor or hi > len(old_lines):
                continue
            if old_lines and not any(line.strip() for line in old_lines[lo:hi]):
                continue  # a blank or whitespace-only SEARCH is no anchor a person (or model) would write
            current = new_lines[: to_new(lo)] + old_lines[lo:]
            if _count(current, old_lines[lo:hi]) == 1:
                return lo, hi
    return None


def _count(doc: list[str], part: list[str]) -> int:
    if not part:
        return 1
    first, size = part[0], len(part)
    return sum(1 for i in range(len(doc) - size + 1) if doc[i] == first and doc[i : i + size] == part)


def _block(old_lines, new_lines, start: int, end: int, members) -> Block:
    lines: list[tuple[str, str]] = []
    position = start
    for i1, i2, j1, j2 in members:
        lines += [(" ", line) for line in old_lines[position:i1]]
        lines += [("-", line) for line in old_lines[i1:i2]]
        lines += [("+", line) for line in new_lines[j1:j2]]
        position = i2
    lines += [(" ", line) for line in old_lines[position:end]]
    return Block(lines)


# ---- rendering and parsing -----------------------------------------------------------------------------------


def _text(lines: list[str]) -> str:
    text = "".join(lines)
    return text if not text or text.endswith("\n") else text + "\n"


def render_search_replace(blocks: list[Block]) -> str:
    return "\n".join(
        f"{SEARCH}\n{_text(block.old)}{DIVIDER}\n{_text(block.new)}{REPLACE}\n" for block in blocks
    )


def render_udiff(blocks: list[Block]) -> str:
    return "".join("@@ ... @@\n" + "".join(_text([sign + line]) for sign, line in block.lines) for block in blocks)


def parse_search_replace(text: str) -> list[Block]:
    """Blocks from SEARCH/REPLACE text (anything outside the markers is ignored, as Aider does)."""
    blocks = []
    lines = text_lines(text)
    i = 0
    while i < len(lines):
        if lines[i].rstrip() != SEARCH:
            i += 1
            continue
        divider = _find_line(lines, DIVIDER, i + 1)
        replace = _find_line(lines, REPLACE, divider + 1)
        old, new = lines[i + 1 : divider], lines[divider + 1 : replace]
        blocks.append(Block([("-", line) for line in old] + [("+", line) for line in new]))
        i = replace + 1
    return blocks


def _find_line(lines: list[str], marker: str, start: int) -> int:
    for i in range(start, len(lines)):
        if lines[i].rstrip() == marker:
            return i
    raise FormatError(f"a search/replace block has no {marker!r} line")


def parse_udiff(text: str) -> list[Block]:
    """Hunks from udiff text; a line with no sign at all counts as blank context, as models often drop it."""
    blocks: list[Block] = []
    for line in text_lines(text):
        if line.startswith("@@"):
            blocks.append(Block([]))
        elif line.startswith(("---", "+++")) and not blocks:
            continue
        elif blocks and line[:1] in ("-", "+", " "):
            blocks[-1].lines.append((line[0], line[1:]))
        elif blocks and not line.strip():
            blocks[-1].lines.append((" ", line))
        elif blocks and not line.startswith("\\"):
            raise FormatError(f"a udiff hunk has a line without a sign: {line!r}")
    return blocks


# ---- line-granular OT ----------------------------------------------------------------------------------------


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
        forms = [_context_form(before, start, end, new, pos, done, last)]
        if start == end and start < len(before) and not (ops and isinstance(ops[-1], Delete) and start != pos):
            # (an insert right after a delete goes where the deleted text was, not before the quote after it)
            forms.append(_insert_before(before, start, new, pos, done, limit))
        region_ops, pos, done = min((form for form in forms if form), key=_quoted_size)
        ops += region_ops
    return ops


Region = tuple[list[Op], int, int]  # a change's ops, and the applier's cursor and last-edit end after them


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


# ---- applying --------------------------------------------------------------------------------------------------


def apply_blocks(before: str, blocks: list[Block]) -> str:
    """Replace each block's old lines by its new lines, in order: first exact match, then a match with a
    uniform indentation offset and trailing whitespace ignored (whose offset is added to the new lines)."""
    doc = text_lines(before)
    for number, block in enumerate(blocks, 1):
        old, new = block.old, block.new
        found = _find_exact(doc, old)
        if found is None:
            # as Aider does: outdent both sides by their common indentation, find the old lines under one
            # indentation prefix, and give the new lines that prefix
            common = min((len(_indent(line)) for line in old + new if line.strip()), default=0)
            found, prefix = _find_loose(doc, [line.rstrip()[common:] for line in old])
            if found is None:
                raise FormatError(f"block {number}: its old lines are not in the file")
            new = [(prefix + line.rstrip("\n")[common:] if line.strip() else "") + "\n" for line in new]
        end = found + len(old)
        if end == len(doc) and doc and not doc[-1].endswith("\n") and new:
            new = [*new[:-1], new[-1].removesuffix("\n")]  # the file ends without a newline; keep it so
        doc[found:end] = new
    return "".join(doc)


def _bare(line: str) -> str:
    return line.removesuffix("\n")


def _find_exact(doc: list[str], old: list[str]) -> int | None:
    if not old:
        return 0 if not doc else None
    want = [_bare(line) for line in old]
    for i in range(len(doc) - len(old) + 1):
        if all(_bare(doc[i + k]) == want[k] for k in range(len(old))):
            return i
    return None


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _find_loose(doc: list[str], body: list[str]) -> tuple[int | None, str]:
    """First position where the outdented `body` matches the document under one indentation prefix
    (trailing whitespace ignored; a blank body line matches a blank or whitespace-only line)."""
    if not any(body):
        return None, ""
    first = next(k for k, line in enumerate(body) if line)
    for i in range(len(doc) - len(body) + 1):
        anchor = doc[i + first].rstrip()
        prefix = anchor[: len(anchor) - len(body[first])]
        if prefix.strip() or not anchor.endswith(body[first]):
            continue
        if all(
            (doc[i + k].strip() == "" if not line else doc[i + k].rstrip() == prefix + line)
            for k, line in enumerate(body)
        ):
            return i, prefix
    return None, ""


def apply_output(fmt: str, before: str, output: str, language: str | None) -> str:
    """The file after applying `output` in format `fmt`; raises FormatError when it cannot be applied."""
    if fmt == "whole":
        return output
    if fmt == "search-replace":
        return apply_blocks(before, parse_search_replace(output))
    if fmt == "udiff":
        return apply_blocks(before, parse_udiff(output))
    if fmt in ("ot", "ot-counts", "ot-lines"):
        try:
            return apply_edit(before, parse_script(output), language).after
        except OTError as exc:
            raise FormatError(str(exc)) from exc
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def reference_output(fmt: str, before: str, after: str) -> str:
    """The minimal correct output of format `fmt` for the edit `before` → `after`."""
    if fmt == "whole":
        return after
    if fmt == "search-replace":
        return render_search_replace(minimal_blocks(before, after))
    if fmt == "udiff":
        return render_udiff(minimal_blocks(before, after))
    if fmt in ("ot", "ot-counts"):
        return format_script(ot_diff(before, after, quoted=fmt == "ot"))
    if fmt == "ot-lines":
        return format_script(line_script(before, after))
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


# ---- model-like perturbations ----------------------------------------------------------------------------------


def perturbations(fmt: str, output: str, seed: str, trials: int = 3) -> list[tuple[str, str]]:
    """(kind, perturbed output) pairs: mistakes models make in this format.

    - OT: one count-only retain off by ±1..3 (`trials` different ones, chosen with `seed`), labelled by the
      op it comes before;
    - line OT: one quoted retain left out (`trials` different ones, chosen with `seed`), as a model that does
      not know which quotes are unique writes it: what followed the retain then has to land without it;
    - search/replace and udiff: `trimmed-whitespace` (blocks written at column 0, trailing spaces dropped)
      and `missing-context` (each block's first context line left out, else its last).
    The whole-file format has none: it has no counts or context to get wrong.
    """
    if fmt in ("ot", "ot-counts"):
        return _miscounted_scripts(output, random.Random(seed), trials)
    if fmt == "ot-lines":
        return _scripts_without_a_retain(output, random.Random(seed), trials)
    if fmt in ("search-replace", "udiff"):
        parse, render = (
            (parse_search_replace, render_search_replace) if fmt == "search-replace" else (parse_udiff, render_udiff)
        )
        blocks = parse(output)
        found = []
        for kind, change in (("trimmed-whitespace", _trim_whitespace), ("missing-context", _drop_context_line)):
            perturbed = render([change(block) for block in blocks])
            if perturbed != output:
                found.append((kind, perturbed))
        return found
    return []


def _miscounted_scripts(output: str, rng: random.Random, trials: int) -> list[tuple[str, str]]:
    ops = parse_script(output)
    counted = [i for i, op in enumerate(ops[:-1]) if isinstance(op, Retain) and op.text is None]
    found = []
    for i in sorted(rng.sample(counted, min(trials, len(counted)))):
        delta = rng.choice([d for d in MISCOUNTS if ops[i].n + d >= 0])
        script = [*ops[:i], Retain(ops[i].n + delta), *ops[i + 1:]]
        found.append((f"miscount before {_what(ops[i + 1 :])}", format_script(script)))
    return found


def _scripts_without_a_retain(output: str, rng: random.Random, trials: int) -> list[tuple[str, str]]:
    """A count-free script has nothing to miscount; its mistake is a missing anchor, labelled by where it was."""
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


def _trim_whitespace(block: Block) -> Block:
    """The block as a model that lost the file's indentation writes it: at column 0, no trailing spaces."""
    body = [(sign, line.rstrip("\n").rstrip(" \t")) for sign, line in block.lines]
    common = min((len(_indent(line)) for _, line in body if line.strip()), default=0)
    return Block([(sign, line[common:] + "\n") for sign, line in body])


def _drop_context_line(block: Block) -> Block:
    """The block without its first context line (or its last, when it starts with a change)."""
    lines = _context_signed(block)
    if len(lines) > 1 and lines[0][0] == " ":
        return Block(lines[1:]) if _has_old(lines[1:]) else block
    if len(lines) > 1 and lines[-1][0] == " ":
        return Block(lines[:-1]) if _has_old(lines[:-1]) else block
    return block


def _context_signed(block: Block) -> list[tuple[str, str]]:
    """A parsed search/replace block has only "-"/"+" lines: mark the shared leading and trailing lines as
    context, so dropping one drops it from both sides."""
    if any(sign == " " for sign, _ in block.lines):
        return block.lines
    old, new = block.old, block.new
    lead, trail = shared_ends(old, new)
    middle = [("-", line) for line in old[lead : len(old) - trail]] + [
        ("+", line) for line in new[lead : len(new) - trail]
    ]
    return [(" ", line) for line in old[:lead]] + middle + [(" ", line) for line in old[len(old) - trail :]]


def shared_ends(old: list[str], new: list[str]) -> tuple[int, int]:
    """(lead, trail): how many lines the two lists share at their start, and then at their end."""
    lead = 0
    while lead < min(len(old), len(new)) and old[lead] == new[lead]:
        lead += 1
    trail = 0
    while trail < min(len(old), len(new)) - lead and old[-1 - trail] == new[-1 - trail]:
        trail += 1
    return lead, trail


def _has_old(lines: list[tuple[str, str]]) -> bool:
    return any(sign != "+" for sign, _ in lines)

