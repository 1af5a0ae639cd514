"""The `agent` command: the entry point above every package, one table of subcommands.

Each subcommand is a module's `main(argv, prog) -> int` with its own parser, imported only when it runs, so
`agent --help` stays instant and a headless `agent run` never loads the terminal app.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tools.exit_codes import ExitCode

Main = Callable[[Sequence[str], str], int]


def _serve(argv: Sequence[str], prog: str) -> int:
    """`agent serve`: the embedded engine in this process, or vLLM as a child process (`--engine vllm`)."""
    choose = argparse.ArgumentParser(add_help=False)
    choose.add_argument("--engine", choices=("embedded", "vllm"), default="embedded")
    known, rest = choose.parse_known_args(argv)
    if known.engine == "vllm":
        return _entry("decoding.vllm.launch:main")(rest, f"{prog} --engine vllm")
    return _entry("decoding.serving.server:main")(rest, prog)


def _entry(target: str) -> Main:
    """The function a "module:function" target names, its module imported now (when its command runs)."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    target: str | Main  # "module:function", imported only when the command runs; or a function here
    help: str

    def run(self, argv: Sequence[str], prog: str) -> int:
        main = _entry(self.target) if isinstance(self.target, str) else self.target
        return main(list(argv), prog)


COMMANDS = (
    Command(("tui",), "tui.app:main",
            "the terminal app: a conversation with the agent, every edit shown before it is written"),
    Command(("run",), "agent.headless:main", "carry out the task in TASK.md without asking anything (headless)"),
    Command(("apply",), "tools.commands:apply_main",
            "apply an edit script to a file (tolerant of miscounts, refuses broken syntax)"),
    Command(("ot-diff",), "tools.commands:ot_diff_main", "print the edit script that turns one file into another"),
    Command(("undo",), "tools.commands:undo_main", "revert the last edit applied by agent (to FILE, if given)"),
    Command(("serve",), _serve, "serve a model over an OpenAI-compatible API (--engine embedded|vllm)"),
    Command(("export-embedded",), "decoding.vllm.export:main",
            "write the embedded Gemma 3 270M as a Hugging Face directory"),
    # before ("eval",): the first command whose words begin the arguments runs (`find_command`)
    Command(("eval", "grounded"), "evals.command:grounded_main",
            "grounded decoding: the embedded model writes the suite's edits, grounding off and on"),
    Command(("eval",), "evals.command:main",
            "editing evals: output tokens per edit format, whether each applies, decoding speed"),
    Command(("bench", "apply"), "evals.apply_bench:main",
            "how the applier lands exact, miscounted and malformed scripts"),
    Command(("bench", "decode"), "decoding.lab.bench:main",
            "plain vs speculative decoding vs transformers' prompt lookup"),
    Command(("bench", "held-out"), "decoding.lab.held_out:main",
            "drafters on code the MTP head never trained on, via agent serve"),
    Command(("bench", "serve"), "decoding.lab.serve_load:main",
            "many clients at once on agent serve: answered, 429, reset, latency"),
)

EXAMPLES = """\
examples:
  agent                                   # the terminal app in this directory (same as agent tui)
  agent run task.md --model hosted_vllm/google/gemma-4-26B-A4B-it --api-base http://127.0.0.1:8000/v1
  agent serve                             # the embedded model at http://127.0.0.1:8765/v1
  agent serve --engine vllm --model google/gemma-4-26B-A4B-it   # Gemma 4 with its MTP assistant
  agent apply notes.txt edit.ot           # apply an edit script to a file; agent undo reverts it
  agent eval --quick                      # tokens per edit format, decoding speed per drafter

`agent COMMAND --help` explains each command."""


def usage(prefix: tuple[str, ...] = ()) -> str:
    """The commands (under `prefix`, e.g. ("bench",)) with what each is for."""
    shown = [c for c in COMMANDS if c.words[: len(prefix)] == prefix]
    width = max(len(" ".join(c.words)) for c in shown)
    lines = [f"usage: agent {' '.join(prefix) + ' ' if prefix else ''}COMMAND [options]", "", "commands:"]
    lines += [f"  {' '.join(c.words):<{width}}  {c.help}" for c in shown]
    if not prefix:
        lines = ["Retain: a local coding agent that edits files with operational-transform edit scripts.", "",
                 *lines, "", EXAMPLES]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # the reader went away (`agent --help | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush is quiet too
        return ExitCode.OK


def find_command(argv: Sequence[str]) -> Command | None:
    """The command whose words begin `argv` (the first in COMMANDS: `eval grounded` before `eval`), or None."""
    return next((c for c in COMMANDS if tuple(argv[: len(c.words)]) == c.words), None)


def _dispatch(argv: list[str]) -> int:
    if not argv and sys.stdin.isatty() and sys.stdout.isatty():
        argv = ["tui"]  # `agent` alone at a terminal opens the app
    if command := find_command(argv):
        return command.run(argv[len(command.words) :], "agent " + " ".join(command.words))
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return ExitCode.OK
    groups = {c.words[0] for c in COMMANDS if len(c.words) > 1}
    if argv and argv[0] in groups:
        print(usage((argv[0],)), file=sys.stderr)
        return ExitCode.USAGE
    if argv:
        names = sorted({c.words[0] for c in COMMANDS})
        close = difflib.get_close_matches(argv[0], names, n=1)
        hint = f"; did you mean `agent {close[0]}`?" if close else f"; commands: {', '.join(names)}"
        print(f"agent: unknown command {argv[0]!r}{hint}", file=sys.stderr)
        return ExitCode.USAGE
    print(usage())  # `agent` alone in a pipe or a script: the help, as before
    return ExitCode.USAGE


if __name__ == "__main__":
    sys.exit(main())
