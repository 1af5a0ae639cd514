"""Every `agent …` command the documentation shows parses with that subcommand's real parser.

A command is found in two places: a line of a shell code block (```` ```sh ````, `bash`, `shell`, `console`)
whose command (after a pipe, `&&` or `;` too) is `agent` or a path ending in `/agent` (`# comments` dropped, `\\`
continuations joined), and an inline code span that starts with the word `agent`. It is routed by
`tui.cli.main`, exactly as typed at a shell, and stopped right after its parser has read the arguments, so nothing
runs.

Placeholders, the convention the docs follow:
- a capitalised word (`FILE`, `TASK.md`, `M`, `URL`, `OUT`, `RUN_ID`) or `…` stands for a string value and is
  parsed as it is, so it may only stand where a string (a path, a name, a URL) goes; where a number goes the docs
  show an example number (`--stratify 40`, not `--stratify N`);
- `[…]` marks an optional part (`agent undo [FILE]`, `[--draft-tokens 16]`): the command must parse with it and
  without it;
- `agent` alone is the terminal app (`agent tui`), as at a terminal;
- a command's name alone (`agent apply`, `agent bench held-out`) names it: it must be a command, and its
  arguments are not checked.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest

from tui import cli

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "decoding" / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^\s*(?:`{3,}|~{3,})([^`]*)$")  # an inline span at the start of a line is not a fence
SHELL = {"sh", "bash", "shell", "console"}
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
SEPARATORS = {"|", "||", "&&", ";"}
MENTIONS_AGENT = re.compile(r"(^|[\s|&;/])agent(\s|$)")


class _Parsed(Exception):
    """Raised by the parser once it has read the arguments: the command would run now."""


class _Refused(Exception):
    """Raised by the parser when it rejects the arguments (argparse has printed why on stderr)."""


def _is_agent(word: str) -> bool:
    return word == "agent" or word.endswith("/agent")


def _fenced_commands(lines: list[str]) -> list[tuple[int, str]]:
    """(line number, command) for each `agent` command in the fenced code blocks."""
    found, fenced, shell, pending, start = [], False, False, "", 0
    for number, line in enumerate(lines, 1):
        if fence := FENCE.match(line):
            fenced, shell, pending = not fenced, fence.group(1).strip() in SHELL, ""
            continue
        if not (fenced and shell):
            continue
        if not pending:
            start = number
            if not MENTIONS_AGENT.search(line):  # other code: an edit script, JSON, Python
                continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command, pending = pending + line, ""
        try:
            words = shlex.split(command, comments=True)
        except ValueError:  # unbalanced quotes: kept whole, so that its test fails and says where
            found.append((start, command.strip()))
            continue
        segment: list[str] = []
        for word in [*words, ";"]:
            if word not in SEPARATORS:
                segment.append(word)
                continue
            if segment and _is_agent(segment[0]):
                found.append((start, shlex.join(["agent", *segment[1:]])))
            segment = []
    return found


def _inline_commands(lines: list[str]) -> list[tuple[int, str]]:
    """(line number, command) for each inline code span outside fenced blocks that starts with the word `agent`."""
    found, fenced = [], False
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for match in INLINE_CODE.finditer(line):
            code = match.group(2).strip()
            if code == "agent" or code.startswith("agent "):
                found.append((number, code))
    return found


def documented_commands(text: str) -> list[tuple[int, str]]:
    """Every `agent` command a Markdown text shows, with its line number."""
    lines = text.splitlines()
    return sorted(_fenced_commands(lines) + _inline_commands(lines))


def variants(command: str) -> list[list[str]]:
    """The argument lists a documented command stands for: with and without each `[optional part]`."""
    words = shlex.split(command)[1:] or ["tui"]
    results: list[list[str]] = [[]]
    optional: list[str] | None = None
    for word in words:
        if optional is None and word.startswith("["):
            optional, word = [], word[1:]
        if optional is None:
            results = [[*r, word] for r in results]
            continue
        closes = word.endswith("]")
        optional.append(word[:-1] if closes else word)
        if closes:
            results = [*results, *[[*r, *optional] for r in results]]
            optional = None
    if optional is not None:
        raise ValueError(f"unclosed [ in {command!r}")
    return results


def parse_error(argv: list[str]) -> str | None:
    """None when `agent ARGV` parses; else what is wrong with it (argparse's message, or why nothing parsed it)."""
    parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        try:
            parse_args(self, args, namespace)
        except SystemExit as exc:  # argparse exits 0 after --help, 2 after printing a usage error
            if exc.code:
                raise _Refused() from exc
        raise _Parsed()

    stderr = io.StringIO()
    try:
        with (mock.patch.object(argparse.ArgumentParser, "parse_args", parse_and_stop),
              contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO())):
            cli.main(argv)
    except _Parsed:
        return None
    except _Refused:
        return stderr.getvalue().strip().splitlines()[-1]
    return stderr.getvalue().strip() or "no subcommand parsed these arguments"


def _all_documented() -> list[tuple[str, str]]:
    return [(f"{path.relative_to(ROOT)}:{number}", command)
            for path in DOCUMENTS for number, command in documented_commands(path.read_text(encoding="utf-8"))]


DOCUMENTED = _all_documented()
NAMES = {command.words for command in cli.COMMANDS}


def test_the_docs_show_commands_of_every_kind():
    shown = {tuple(shlex.split(command)[1:3]) for _, command in DOCUMENTED}
    for words in (("eval", "--quick"), ("run", "TASK.md"), ("apply", "notes.txt"), ("serve", "--engine")):
        assert words in shown


@pytest.mark.parametrize(("where", "command"), DOCUMENTED, ids=[f"{w} {c}" for w, c in DOCUMENTED])
def test_documented_command_parses(where, command):
    for argv in variants(command):
        if tuple(argv) in NAMES:
            continue
        error = parse_error(argv)
        assert error is None, f"{where}: `agent {shlex.join(argv)}` does not parse: {error}"


def test_a_flag_the_docs_show_but_the_parser_lacks_fails():
    """What renaming an option does to a doc that still shows the old name: its command no longer parses."""
    [(_, shown)] = documented_commands("Decode fewer: `agent eval --quick --draft-lenght 16`.")
    [argv] = variants(shown)
    assert "unrecognized arguments: --draft-lenght" in parse_error(argv)
    assert parse_error(["eval", "--quick", "--draft-tokens", "16"]) is None


def test_parse_errors_name_what_is_wrong():
    assert "--no-such-flag" in parse_error(["run", "TASK.md", "--no-such-flag"])
    assert "--speculation" in parse_error(["serve", "--engine", "vllm", "--model", "M", "--speculation", "x"])
    assert "--stratify" in parse_error(["eval", "--stratify", "N"])  # a placeholder where a number goes
    assert "unknown command" in parse_error(["evaluate", "--quick"])


def test_commands_are_found_in_fenced_blocks_and_inline_code():
    text = "\n".join([
        "Run `agent eval --quick`, not `agent.toml` or `agentic`; `agent` alone opens the app.",
        "```sh",
        "printf 'x' | agent apply notes.txt -   # a comment",
        ".venv/bin/pip install -e . && .venv/bin/agent eval \\",
        "    --limit 2",
        "```",
    ])
    assert documented_commands(text) == [
        (1, "agent"), (1, "agent eval --quick"), (3, "agent apply notes.txt -"), (4, "agent eval --limit 2"),
    ]


def test_optional_parts_are_parsed_with_and_without():
    assert variants("agent undo [FILE]") == [["undo"], ["undo", "FILE"]]
    assert variants("agent eval [--draft-tokens 16] --json OUT") == [
        ["eval", "--json", "OUT"], ["eval", "--draft-tokens", "16", "--json", "OUT"],
    ]
    assert variants("agent") == [["tui"]]
    with pytest.raises(ValueError, match="unclosed"):
        variants("agent eval [--quick")
