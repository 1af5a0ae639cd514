"""Edits on files, resolved once and written only as resolved.

An edit is resolved into a PreparedEdit: the bytes to write and the bytes they were computed from, with
the file's conventions (BOM, CRLF, mode) kept. Writing it refuses, writing nothing, when the file changed
since it was read, so what an approver saw is exactly what lands. Every write of an existing file is
journaled for `agent undo`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tools.formats import Format, FormatError
from tools.journal import Journal
from tools.ot import Insert, Op, ot_diff
from tools.ot_script import parse_script
from tools.patch import EditRefused, PlacedEdit, apply_edit, syntax_notes
from tools.syntax import SyntaxProblem, added_problems, language_for, syntax_problems
from tools.text_files import (
    FileRefused,
    atomic_write,
    decode_text,
    describe_os_error,
    digest,
    read_bytes,
    read_text_file,
    unified_diff,
)


@dataclass(frozen=True)
class PreparedEdit:
    """An edit resolved once: exactly the bytes to write, and the bytes (None: no file) they replace."""

    path: Path
    before: bytes | None
    after: bytes
    mode: int | None
    diff: str
    placed: PlacedEdit | None = None  # the applier's result, for an edit script (None: a whole-file write)

    @property
    def changes(self) -> bool:
        return self.after != self.before


def prepare_script(
    path: str | Path,
    script: str | Sequence[Op],
    *,
    allow_broken: bool = False,
    deadline: float | None = None,
    root: Path | None = None,
) -> PreparedEdit:
    """Parse (if text), place and check `script` on the file as it is now; nothing is written. With `root` the
    file is read from it without following symlinks (`open_regular`).

    Raises ScriptSyntaxError / EditRefused / SyntaxRefused (all OTError) or FileRefused."""
    file = read_text_file(path, root)
    _check_writable(file.path, file.mode)
    ops = parse_script(script) if isinstance(script, str) else list(script)
    if any(isinstance(op, Insert) and "\x00" in op.text for op in ops):
        raise _inserts_nul(file.path)
    placed = apply_edit(file.text, ops, language_for(file.path), allow_broken=allow_broken, deadline=deadline)
    diff = unified_diff(file.text, placed.after, file.path.name)
    return PreparedEdit(file.path, file.raw, file.encode(placed.after), file.mode, diff, placed)


def prepare_edit(
    path: str | Path, body: str, edit_format: Format, *, deadline: float | None = None, root: Path | None = None
) -> PreparedEdit:
    """`body`, an edit in `edit_format`, prepared on the file as it is now; nothing is written. An edit script goes
    through the tolerant applier (`prepare_script`); another format through its `apply`, then the same syntax check.

    Raises EditRefused (a block that does not apply, named with the closest lines of the file) / SyntaxRefused
    (both OTError) or FileRefused."""
    if edit_format.edit_script:
        return prepare_script(path, body, deadline=deadline, root=root)
    file = read_text_file(path, root)
    _check_writable(file.path, file.mode)
    language = language_for(file.path)
    try:
        after = edit_format.apply(file.text, body, language)
    except FormatError as exc:
        raise EditRefused(f"refused: {exc}") from None
    if after.count("\x00") > file.text.count("\x00"):
        raise _inserts_nul(file.path)
    notes = syntax_notes(after, language, partial(_added, file.text, language))
    placed = PlacedEdit(file.text, after, ot_diff(file.text, after), notes=notes)
    diff = unified_diff(file.text, after, file.path.name)
    return PreparedEdit(file.path, file.raw, file.encode(after), file.mode, diff, placed)


def _added(before: str, language: str | None, after: str) -> list[SyntaxProblem]:
    """The syntax problems `after` adds to `before` (none without a grammar)."""
    if language is None:
        return []
    return added_problems(syntax_problems(before, language), syntax_problems(after, language))


def _inserts_nul(path: Path) -> EditRefused:
    return EditRefused(
        f"refused: the edit inserts a NUL character (\\u0000), which would turn {path.name} into a binary "
        "file that later edits refuse; the file is unchanged. Write the character as an escape of the file's "
        "language instead (e.g. \"\\\\0\" or \"\\\\x00\" in a string literal)"
    )


def prepare_content(path: Path, content: str, *, overwrite: bool, root: Path | None = None) -> PreparedEdit:
    """A whole-file write of `content` to `path` (a new file, or a replacement when `overwrite`)."""
    try:
        exists = os.path.lexists(path)
    except ValueError as exc:
        raise FileRefused(describe_os_error(path, exc)) from None
    if not exists:
        return PreparedEdit(path, None, content.encode("utf-8"), None, unified_diff("", content, path.name))
    if not overwrite:
        raise FileRefused(f"{path.name} already exists; change it with an edit script, or overwrite it to replace it")
    data, info = read_bytes(path, root)
    _check_writable(path, info.st_mode)
    try:
        before = decode_text(path, data)
    except FileRefused:
        before = ""  # replacing a binary file whole: its content is not shown
    diff = unified_diff(before, content, path.name)
    return PreparedEdit(path, data, content.encode("utf-8"), stat.S_IMODE(info.st_mode), diff)


def _check_writable(path: Path, mode: int) -> None:
    if not mode & stat.S_IWUSR:
        raise FileRefused(
            f"{path}: read-only (mode {stat.S_IMODE(mode):04o}), so it was left unchanged; if it is meant to be "
            f"edited, make it writable first (chmod u+w {path}) and run the edit again"
        )


def write_prepared(prepared: PreparedEdit, *, journal: bool = True, root: Path | None = None) -> None:
    """Write exactly `prepared.after`, refusing (FileChanged, nothing written) when the file is no longer the
    one it was computed from; the content it replaces is journaled for undo (unless `journal` is False).

    The journal entry is written first, so a process killed anywhere in the write leaves an edit that is either
    on disk and undoable, or not on disk and passed over by undo (`Journal.undo`); a write that fails is voided."""
    keep = Journal() if journal and prepared.before is not None else None
    entry = None
    if keep is not None and prepared.before is not None:
        entry = keep.note(prepared.path, keep.keep(prepared.before), digest(prepared.after), prepared.mode)
    try:
        atomic_write(
            prepared.path,
            prepared.after,
            prepared.mode,
            expected=prepared.before,
            must_not_exist=prepared.before is None,
            root=root,
        )
    except BaseException:
        if keep is not None and entry is not None:
            keep.void(entry)
        raise


def apply_script_to_file(
    path: str | Path,
    script: str | Sequence[Op],
    *,
    allow_broken: bool = False,
    dry_run: bool = False,
    journal: bool = True,
    deadline: float | None = None,
) -> PreparedEdit:
    """Prepare `script` on the file, then write it unless `dry_run` or it changes nothing; returns what was
    prepared. On any refusal the file is untouched."""
    prepared = prepare_script(path, script, allow_broken=allow_broken, deadline=deadline)
    if not dry_run and prepared.changes:
        write_prepared(prepared, journal=journal)
    return prepared
