"""The one protocol a grounding follower keeps: fed a block's text as it is written, it says what may come next.

Grounded decoding tries each candidate token's text on a fork of the follower and keeps the fork only for the
token it takes, so forking is on the hot path and must leave the original untouched: `Forkable` is the one way
every follower forks.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, Self

LINE_END = frozenset("\n")  # what ends a free line (a comment, a new line of a line block)


class BlockFollower(Protocol):
    """One grounded block as it is written (`ScriptFollower`, `SearchReplaceFollower`, `UdiffFollower`).

    `feed(text)` returns where in `text` the block ended (at its closing fence), len(text) when it goes on, or None
    when the text is not allowed (the follower's state is then undefined: feed a fork); text may come in any chunks.
    `next_chars()`: the characters that may come next (a superset), or None when almost any may, up to one of
    `free_ends` (an insert's text, a new line), which the engine then checks token by token. `can_stop`: whether a
    stop token may end the reply here. `fork()`: an independent copy to try a continuation on. `source`: the file
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


class Forkable:
    """A follower whose fields are immutable values or shared read-only, but for those named in `forked`, which
    have a `fork()` of their own (a parser, the block being followed): `fork()` copies the fields and forks those."""

    forked: ClassVar[tuple[str, ...]] = ()

    def fork(self) -> Self:
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        for name in self.forked:
            part = getattr(self, name)
            if part is not None:
                setattr(copy, name, part.fork())
        return copy
