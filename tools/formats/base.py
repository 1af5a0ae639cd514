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
class AgentPrompt:
    """How the agent teaches a format: the slots of its system prompt (`agent/prompts/system.md`) and the
    native `edit` tool's descriptions."""

    doing: str  # the intro's "reading files, {doing}, and running commands"
    read: str  # the read tool's first sentence: what the exact text is for
    tool: str  # the edit tool's entry in the tool list, with a short example block
    section: str  # the section that teaches the format, with one worked example
    tool_description: str  # the native `edit` tool's description
    body_description: str  # the native `edit` tool's `script` argument: the body of a block


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
    - `quick`: whether `agent eval --quick` decodes it;
    - `prompt`: how the agent teaches it (None: the agent does not offer it; `agent run --edit-format`);
    - `edit_script`: an OT edit script, which the agent places with the tolerant applier (`tools.patch`, with its
      corrections) rather than with `apply`;
    - `fenced_text(body)`: whether a block's body, written so far, ends where a fence line is the file's text, not
      the block's end (inside a SEARCH/REPLACE block, as grounding reads it); None: a fence line always ends it.
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
    prompt: AgentPrompt | None = None
    edit_script: bool = False
    fenced_text: Callable[[str], bool] | None = None

    def __post_init__(self) -> None:
        if (self.role == "alternative") != (self.baseline is not None):
            raise ValueError(f"edit format {self.name!r}: an alternative, and only one, has a baseline pairing")


# the worked example every format's prompt teaches with: the same change to the same file
EXAMPLE_BEFORE = (
    "def total(items):\n    return sum(items)\n\n\n"
    "def mean(items):\n    return total(items) / len(items)\n"
)
EXAMPLE_AFTER = (
    'def total(items):\n    """Sum of the items."""\n    return sum(items)\n\n\n'
    "def mean(items):\n    return total(items) / max(len(items), 1)\n"
)
EXAMPLE_TASK = (
    "Worked example. The file `stats.py` is:\n\n"
    + "".join(f"    {line}" if line.strip() else line for line in EXAMPLE_BEFORE.splitlines(keepends=True))
    + "\nTo add a docstring to `total` and avoid dividing by zero in `mean`, reply:"
)


def example_block(fence: str, reference: Callable[[str, str], str]) -> str:
    """The worked example's reply in a format: its reference output in its fence."""
    body = reference(EXAMPLE_BEFORE, EXAMPLE_AFTER)
    body = body if body.endswith("\n") else body + "\n"
    return f"```{fence} stats.py\n{body}```"


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


def agent_format_names() -> tuple[str, ...]:
    """The formats the agent can edit a file in place with (those with a prompt), in registration order."""
    return tuple(fmt.name for fmt in _REGISTRY.values() if fmt.prompt is not None)


def agent_format(name: str) -> Format:
    """The agent's edit format named `name`; a ValueError listing the choices for an unknown or unsuitable one."""
    if name not in agent_format_names():
        kind = "is not an edit format the agent offers" if name in _REGISTRY else "is no edit format"
        raise ValueError(f"{name!r} {kind}; choose one of {', '.join(agent_format_names())}")
    return _REGISTRY[name]
