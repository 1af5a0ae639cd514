"""The one type an edit format is, and the registry every user of formats iterates (evals, grounding, the agent).

Adding a format is one `register(Format(...))` in its own module, imported by `tools/formats/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tools.grounding.follower import BlockFollower


class FormatError(ValueError):
    """An output cannot be applied to the file with its format's applier."""


Perturbations = list[tuple[str, str]]  # (kind of mistake, the output with it)
Role = Literal["subject", "alternative"]


@dataclass(frozen=True)
class Pairing:
    """The drafter an agent pairs a format with today, and who does (the cost table's baseline for it)."""

    drafter: str
    who: str


@dataclass(frozen=True)
class Format:
    """Everything that is particular to one edit format.

    - `name`: what `agent eval --formats`, the reports and the registry call it;
    - `fence`: the word after ``` that opens a block of it (```edit PATH, ```search-replace PATH, ```diff PATH);
    - `instruction`: how a prompt asks for it, in a sentence or two;
    - `reference(before, after)`: its minimal correct output for that edit;
    - `apply(before, output, language)`: the file after `output`, or FormatError;
    - `perturb(output, seed, trials)`: the mistakes models make in it (None: it has none to make);
    - `follower(source)`: grounding, one block followed as it is written against the file (None: not grounded);
    - `role`: how the cost per applied edit compares it: a `subject` (OT; the first registered leads the report) is
      set against every `alternative` (what agents write today); None: neither;
    - `baseline`: for an alternative, the drafter agents pair it with today and who does;
    - `quick`: whether `agent eval --quick` decodes it.
    """

    name: str
    fence: str
    instruction: str
    reference: Callable[[str, str], str]
    apply: Callable[[str, str, str | None], str]
    perturb: Callable[[str, str, int], Perturbations] | None = None
    follower: Callable[[str | None], BlockFollower] | None = None
    role: Role | None = None
    baseline: Pairing | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        if (self.role == "alternative") != (self.baseline is not None):
            raise ValueError(f"edit format {self.name!r}: an alternative, and only one, has a baseline pairing")


_REGISTRY: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add `fmt` (a name already taken is a mistake, not an override)."""
    if fmt.name in _REGISTRY:
        raise ValueError(f"edit format {fmt.name!r} is registered twice")
    _REGISTRY[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    """Remove a format (tests that register one of their own clean up with this)."""
    _REGISTRY.pop(name, None)


def get_format(name: str) -> Format:
    """The format named `name`; an unknown name is a ValueError that lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown edit format {name!r}; known: {', '.join(_REGISTRY)}") from None


def format_names() -> tuple[str, ...]:
    """Every registered format's name, in registration order."""
    return tuple(_REGISTRY)


def formats() -> tuple[Format, ...]:
    """Every registered format, in registration order."""
    return tuple(_REGISTRY.values())
