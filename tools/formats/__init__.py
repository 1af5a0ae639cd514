"""Edit formats, one module each, registered once: what a model writes to change a file, and how it lands.

`base.Format` is the one type; importing this package registers the built-in formats in the order the evals report
them: `whole`, `search-replace`, `udiff` (`lines` holds the line-block grammar these two share), and the OT scripts
`ot`, `ot-counts`, `ot-lines`. Every user iterates the registry (`formats`, `format_names`) or looks one up by name
(`get_format`); a new format is a module that calls `register(Format(...))`, imported here.
"""

# importing a format's module registers it: in the order the evals report formats, not isort's
# isort: off
from tools.formats import whole
from tools.formats import search_replace
from tools.formats import udiff
from tools.formats import ot
# isort: on
from tools.formats.base import (
    AgentPrompt,
    Format,
    FormatError,
    Pairing,
    Perturbations,
    agent_format,
    agent_format_names,
    format_names,
    formats,
    get_format,
    register,
    unregister,
)

OT = get_format("ot")  # the agent's edit format unless told otherwise

__all__ = [
    "OT",
    "AgentPrompt",
    "Format",
    "FormatError",
    "Pairing",
    "Perturbations",
    "agent_format",
    "agent_format_names",
    "format_names",
    "formats",
    "get_format",
    "ot",
    "register",
    "search_replace",
    "udiff",
    "unregister",
    "whole",
]
