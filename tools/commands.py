"""`agent apply`, `agent ot-diff` and `agent undo`: the edit language and the journal from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tools.command_line import parse_arguments
from tools.exit_codes import ExitCode

APPLY_EPILOG = """\
edit script: operations separated by commas or newlines, optionally in [ ]:
  retain(N)         keep N code points          retain("text")  keep exactly this text
  delete(N)         remove N code points        delete("text")  remove exactly this text
  insert("text")    add text (JSON string: \\n, \\", \\\\, \\uXXXX)
  # comment         ignored to the end of the line
Whatever the script does not reach is kept. Quoted retain/delete re-anchor a miscounted retain.

example:
  printf 'retain(8)\\ndelete("really")\\ninsert("very very")' | agent apply notes.txt -

exit codes: 0 applied, 2 usage or unreadable file, 3 script unresolvable, 4 would add syntax errors
"""



def apply_main(argv: Sequence[str] | None = None, prog: str = "agent apply") -> int:
    description = "Apply an edit script to FILE in place and print the unified diff."
    return _cmd_apply(parse_arguments(argv, prog, description, _apply_arguments, APPLY_EPILOG))


def ot_diff_main(argv: Sequence[str] | None = None, prog: str = "agent ot-diff") -> int:
    description = "Print a minimal, self-checking edit script (one op per line) turning BEFORE into AFTER."
    return _cmd_ot_diff(parse_arguments(argv, prog, description, _ot_diff_arguments))


def undo_main(argv: Sequence[str] | None = None, prog: str = "agent undo") -> int:
    description = "Restore the content a file had before the last edit applied through Retain."
    return _cmd_undo(parse_arguments(argv, prog, description, _undo_arguments))


def _apply_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the file to edit")
    parser.add_argument("script", help="path of the edit script, or - to read it from stdin")
    parser.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    parser.add_argument("--json", action="store_true", help='print {"ok", "corrections", "error", "diff"} as JSON')
    parser.add_argument("--allow-broken", action="store_true", help="apply even if the edit adds syntax errors")


def _ot_diff_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--counts-only", action="store_true", help="deletes as counts, without their quoted text")


def _undo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", type=Path, help="undo the last edit of this file (default: the last edit)")
    parser.add_argument("--force", action="store_true", help="restore even if the file changed since the edit")


def _read_script(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    return Path(source).read_text(encoding="utf-8")


def _cmd_apply(args: argparse.Namespace) -> int:
    from tools.edits import apply_script_to_file
    from tools.ot import OTError
    from tools.patch import SyntaxRefused
    from tools.text_files import FileRefused

    try:
        script = _read_script(args.script)
    except (OSError, UnicodeDecodeError) as exc:
        return _report_apply(args, ExitCode.USAGE, f"cannot read the edit script {args.script}: {exc}")
    try:
        result = apply_script_to_file(args.file, script, allow_broken=args.allow_broken, dry_run=args.dry_run)
    except FileRefused as exc:
        return _report_apply(args, ExitCode.USAGE, str(exc))
    except SyntaxRefused as exc:
        return _report_apply(args, ExitCode.BROKEN, str(exc))
    except OTError as exc:
        return _report_apply(args, ExitCode.UNRESOLVABLE, f"{exc}\nThe file is unchanged.")
    placed = result.placed
    assert placed is not None  # a script's preparation carries the applier's result
    corrections = [c.to_dict() for c in placed.corrections]
    if args.json:
        print(json.dumps({"ok": True, "corrections": corrections, "error": None, "diff": result.diff}))
        return ExitCode.OK
    for note in [c.message for c in placed.corrections] + placed.notes:
        print(f"note: {note}", file=sys.stderr)
    print(result.diff, end="")
    if args.dry_run:
        print("dry run: nothing written", file=sys.stderr)
    return ExitCode.OK


def _report_apply(args: argparse.Namespace, code: int, message: str) -> int:
    if args.json:
        print(json.dumps({"ok": False, "corrections": [], "error": message, "diff": ""}))
    else:
        print(f"agent apply: {message}", file=sys.stderr)
    return code


def _cmd_ot_diff(args: argparse.Namespace) -> int:
    from tools.ot import format_script, ot_diff
    from tools.text_files import FileRefused, read_text_file

    try:
        before, after = read_text_file(args.before).text, read_text_file(args.after).text
    except FileRefused as exc:
        print(f"agent ot-diff: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    script = format_script(ot_diff(before, after, quoted=not args.counts_only))
    if script:
        print(script)
    return ExitCode.OK


def _cmd_undo(args: argparse.Namespace) -> int:
    from tools.journal import Journal, UndoRefused

    journal = Journal()
    try:
        path, diff = journal.undo(args.file, force=args.force)
    except UndoRefused as exc:
        print(f"agent undo: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    finally:
        for note in journal.notes:  # journal lines it had to skip (torn by a crash)
            print(f"agent undo: note: {note}", file=sys.stderr)
    print(diff, end="")
    print(f"restored {path}", file=sys.stderr)
    return ExitCode.OK
