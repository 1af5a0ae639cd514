"""The exit codes of every `agent` command, in one place (the tables of docs/agent.md and docs/edit-language.md).

A code means one thing per command; the two commands that use 3 and 4 give them their own names.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # agent run: failed or gave up; agent undo: refused
    USAGE = 2  # a usage error, or a file that cannot be edited as text
    UNRESOLVABLE = 3  # agent apply: the script cannot be placed (malformed, ambiguous, out of range)
    BUDGET = 3  # agent run: a budget ran out
    BROKEN = 4  # agent apply: the edit would add syntax errors
    UNAVAILABLE = 4  # agent run / tui / eval: the model server is unreachable or misconfigured
