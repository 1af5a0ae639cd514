"""Grounding a whole reply: which of its fenced blocks are grounded, and in which file.

A reply is free text but for the blocks a fence opens: each registered format with a follower (`tools.formats`)
names its fence, ```edit [PATH] for the edit scripts (`script`), ```search-replace PATH and ```diff PATH for the line
blocks (`search_replace`, `udiff`); a bare ```diff (no path) is an ordinary markdown block, left free. A block for
another path than the one grounded (the request's file) gets its format's syntax rules only.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tools.formats import formats
from tools.grounding.follower import BlockFollower, Forkable

LINE_TAIL = 512  # characters of the current line kept outside blocks (enough for a fence line)
_PATHLESS_FENCE = "edit"  # the agent's own edit block may leave out its path; another fence without one is markdown


def _fence_followers() -> dict[str, Callable[[str | None], BlockFollower]]:
    """Each grounded fence and its follower, from the registry (the OT scripts share ```edit and its follower)."""
    followers: dict[str, Callable[[str | None], BlockFollower]] = {}
    for fmt in formats():
        if fmt.follower is not None and followers.setdefault(fmt.fence, fmt.follower) is not fmt.follower:
            raise ValueError(f"the formats written in ```{fmt.fence} blocks are grounded by different followers")
    return followers


_FOLLOWERS = _fence_followers()
# a block's opening fence: three or more backticks, a grounded format's fence word, then its path
_FENCE = re.compile(
    rf"(?P<fence>`{{3,}})(?P<tool>{'|'.join(map(re.escape, _FOLLOWERS))})(?![\w-])[ \t]*(?P<path>[^\n]*?)[ \t]*"
)


class ReplyFollower(Forkable):
    """The reply read so far: the current line outside blocks, or the grounded block being written."""

    forked = ("block",)

    def __init__(self, source: str | None, path: str | None = None) -> None:
        self.source, self.path = source, path
        self.line = ""
        self.block: BlockFollower | None = None
        self.blocks = 0  # grounded blocks opened

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


def _opening_fence(line: str) -> tuple[str, str] | None:
    """(fence word, path) where `line` opens a grounded block: ```edit [PATH], ```search-replace PATH or ```diff PATH
    (a bare ```diff is an ordinary markdown block)."""
    fence = _FENCE.fullmatch(line)
    if fence is None or (fence["tool"] != _PATHLESS_FENCE and not fence["path"]):
        return None
    return fence["tool"], fence["path"]


def opens_edit_block(text: str) -> bool:
    """Whether `text` (a prompt's end) leaves a grounded block open (```edit, ```search-replace PATH, ```diff PATH):
    a reply to it starts inside one."""
    reply = ReplyFollower(None)
    return reply.read(from_last_fence(text)) and reply.block is not None


def from_last_fence(text: str) -> str:
    """`text` from its last opening fence line on (earlier blocks, e.g. examples, are no concern of the reply)."""
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines[:-1]) if _opening_fence(line)]
    return "\n".join(lines[fences[-1] if fences else -1 :])
