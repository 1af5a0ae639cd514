"""The line-block grammar shared by search/replace and udiff: blocks of old and new lines, their minimal form,
how each format writes and reads them, and Aider's applier for them.

Both formats name a change by its old lines with just enough context around them to be unique where they apply
(`minimal_blocks`). The applier (`apply_blocks`) looks for the old lines line by line, exactly, then with a uniform
indentation offset and trailing whitespace ignored (Aider's steps), and replaces the first match; udiff hunks go
through the same search (Aider adds fuzzy fallbacks for udiff, sub-hunks and diff-match-patch, which are not
reproduced here). The mistakes models make in either: `trimmed-whitespace` (blocks written at column 0, trailing
spaces dropped) and `missing-context` (each block's first context line left out, else its last). `block_format`
makes a format of all this from how it writes and reads blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import TYPE_CHECKING

from tools.formats.base import EXAMPLE_TASK, AgentPrompt, Format, FormatError, Pairing, Perturbations, example_block
from tools.text_files import text_lines

if TYPE_CHECKING:
    from tools.grounding.follower import BlockFollower

SEARCH, DIVIDER, REPLACE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"


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


# ---- formats of blocks ----------------------------------------------------------------------------------------


BLOCKS_CLOSING = (
    "The result comes back as a diff. If a block's old lines are not in the file, or the edit would break the "
    "file's\nsyntax, the file is left unchanged and the message names the block and shows the closest lines of the "
    "file:\nfix the block and send it again. Read a file again before another edit when you are unsure of its "
    "current text."
)


@dataclass(frozen=True)
class BlockTeaching:
    """What the agent's prompt says of a line-block format; `block_format` adds the worked example."""

    instruction: str  # the evals' one-paragraph instruction (`Format.instruction`)
    doing: str  # "editing them with search/replace blocks"
    read: str  # the read tool's first sentence
    tool: str  # the tool list's entry, with a short example
    rules: str  # the section's heading and rules, before the worked example
    tool_description: str  # the native edit tool's
    body_description: str  # its `script` argument's


PROMPT_LOOKUP = Pairing("ngram", "an agent on vLLM's prompt lookup")


def block_format(
    name: str,
    fence: str,
    teaching: BlockTeaching,
    parse: Callable[[str], list[Block]],
    render: Callable[[list[Block]], str],
    follower: Callable[[str | None], BlockFollower],
    fenced_text: Callable[[str], bool] | None = None,
) -> Format:
    """A format that writes line blocks with `render`, reads them with `parse` and grounds them with `follower`: its
    reference is the minimal blocks, its applier `apply_blocks`, its mistakes `block_perturbations`; an alternative
    that `--quick` decodes, measured against prompt lookup, which the agent and the evals teach with `teaching` and
    the worked example in it (`fenced_text`: as `Format`'s)."""

    def reference(before: str, after: str) -> str:
        return render(minimal_blocks(before, after))

    example = example_block(fence, reference)
    prompt = AgentPrompt(
        doing=teaching.doing,
        read=teaching.read,
        tool=teaching.tool,
        section=f"{teaching.rules}\n\n{EXAMPLE_TASK}\n\n{example}\n\n{BLOCKS_CLOSING}",
        tool_description=teaching.tool_description,
        body_description=teaching.body_description,
    )
    return Format(
        name=name,
        fence=fence,
        instruction=teaching.instruction,
        reference=reference,
        apply=lambda before, output, language: apply_blocks(before, _some(parse(output))),
        perturb=lambda output, seed, trials: block_perturbations(output, parse, render),
        follower=follower,
        role="alternative",
        baseline=PROMPT_LOOKUP,
        quick=True,
        prompt=prompt,
        fenced_text=fenced_text,
    )


def _some(blocks: list[Block]) -> list[Block]:
    if not blocks:
        raise FormatError("no block found in it: nothing to apply")
    return blocks


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


def inside_search_replace(text: str) -> bool:
    """Whether `text` ends inside a search/replace block: past a SEARCH line and before its REPLACE line."""
    inside = False
    for line in text_lines(text):
        marker = line.rstrip()
        inside = (inside or marker == SEARCH) and marker != REPLACE
    return inside


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
                raise FormatError(not_found(number, doc, block.old))
            new = [(prefix + line.rstrip("\n")[common:] if line.strip() else "") + "\n" for line in new]
        end = found + len(old)
        if end == len(doc) and doc and not doc[-1].endswith("\n") and new:
            new = [*new[:-1], new[-1].removesuffix("\n")]  # the file ends without a newline; keep it so
        doc[found:end] = new
    return "".join(doc)


def not_found(number: int, doc: list[str], old: list[str]) -> str:
    """The refusal of block `number`, whose `old` lines are not in `doc`: the closest lines of the file, so the
    model can copy them (as Aider answers a SEARCH that does not match)."""
    message = f"block {number}: its old lines are not in the file"
    closest = closest_lines(doc, old)
    if not closest:
        return message
    shown = "".join(line if line.endswith("\n") else line + "\n" for line in closest)
    return (
        f"{message}. Did you mean these lines of the file?\n{shown}"
        "Copy the old lines exactly from the file (whole lines, with their indentation), and send the block again"
    )


def closest_lines(doc: list[str], old: list[str]) -> list[str]:
    """The run of len(old) lines of `doc` most like `old` (difflib's ratio); none when nothing is alike."""
    size, want = len(old), "".join(old)
    best, best_ratio = [], 0.5  # less alike than this is no hint
    for i in range(max(len(doc) - size + 1, 0)):
        matcher = SequenceMatcher(None, "".join(doc[i : i + size]), want, autojunk=False)
        if matcher.real_quick_ratio() > best_ratio and matcher.quick_ratio() > best_ratio:
            ratio = matcher.ratio()
            if ratio > best_ratio:
                best, best_ratio = doc[i : i + size], ratio
    return best


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


# ---- model-like perturbations ----------------------------------------------------------------------------------


def block_perturbations(
    output: str, parse: Callable[[str], list[Block]], render: Callable[[list[Block]], str]
) -> Perturbations:
    """`trimmed-whitespace` and `missing-context` versions of `output`, each where it differs from `output` (at most
    one each: neither depends on a seed)."""
    blocks = parse(output)
    found = []
    for kind, change in (("trimmed-whitespace", _trim_whitespace), ("missing-context", _drop_context_line)):
        perturbed = render([change(block) for block in blocks])
        if perturbed != output:
            found.append((kind, perturbed))
    return found


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

