"""The one protocol a grounding follower keeps: fed a block's text as it is written, it says what may come next."""

from __future__ import annotations

from typing import Protocol


class BlockFollower(Protocol):
    """One grounded block as it is written (`ScriptFollower`, `SearchReplaceFollower`, `UdiffFollower`).

    `feed(text)` returns where in `text` the block ended (at its closing fence), len(text) when it goes on, or None
    when the text is not allowed; text may come in any chunks. `next_chars()`: the characters that may come next (a
    superset), or None when almost any may, up to one of `free_ends` (an insert's text, a new line), which the
    engine then checks token by token. `can_stop`: whether a stop token may end the reply here. `source`: the file
    the block is grounded in, None for the syntax rules only.
    """

    source: str | None

    def feed(self, text: str) -> int | None: ...

    def fork(self) -> BlockFollower: ...

    def next_chars(self) -> frozenset[str] | None: ...

    @property
    def can_stop(self) -> bool: ...

    @property
    def free_ends(self) -> frozenset[str]: ...
