"""Edit scripts applied to files on disk: text decoding, atomic writes, and a journal for undo.

Scripts count code points in the text a model reads: UTF-8 without the BOM, with CRLF shown as LF when
the whole file uses CRLF. Writing puts both back, keeps the file's mode, and goes through a temporary
file, fsync and rename, so a failed or refused edit leaves the file byte-identical. Every applied edit is
journaled (previous content kept by hash) so `agent undo` can restore it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.ot import Op
from tools.ot_script import parse_script
from tools.patch import AppliedEdit, apply_edit
from tools.syntax import language_for

BOM = "\ufeff"


class FileRefused(Exception):
    """The file cannot be edited as text (missing, binary, not UTF-8, a directory)."""


class UndoRefused(Exception):
    """There is nothing to undo, or the file changed since the edit."""


@dataclass(frozen=True)
class TextFile:
    path: Path
    text: str  # what scripts count against: no BOM, LF line ends when the file is all CRLF
    bom: bool
    crlf: bool
    mode: int

    def encode(self, text: str) -> bytes:
        """Bytes for `text` in this file's conventions."""
        if self.crlf:
            text = text.replace("\n", "\r\n")
        return ((BOM if self.bom else "") + text).encode("utf-8")


def read_text_file(path: str | Path) -> TextFile:
    path = Path(path)
    if not path.exists():
        raise FileRefused(f"{path}: no such file")
    if path.is_dir():
        raise FileRefused(f"{path}: is a directory, not a file")
    data = path.read_bytes()
    if b"\x00" in data:
        raise FileRefused(f"{path}: binary file (contains NUL bytes); only UTF-8 text files can be edited")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileRefused(
            f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); only UTF-8 text files can be edited"
        ) from None
    bom = text.startswith(BOM)
    text = text.removeprefix(BOM)
    crlf = "\r\n" in text and text.count("\r\n") == text.count("\n")
    if crlf:
        text = text.replace("\r\n", "\n")
    return TextFile(path, text, bom, crlf, stat.S_IMODE(path.stat().st_mode))


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` all at once: a reader sees the old file or the new one, never half."""
    path = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def text_lines(text: str) -> list[str]:
    """The lines of `text`, each with its "\n", split at "\n" only: str.splitlines also splits at form feeds,
    U+2028 and other characters that sit inside a line of code (in strings, comments, page breaks)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def unified_diff(before: str, after: str, name: str) -> str:
    lines = difflib.unified_diff(
        text_lines(before), text_lines(after), f"a/{name}", f"b/{name}"
    )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


@dataclass
class FileEdit:
    path: Path
    edit: AppliedEdit
    diff: str
    written: bool
    journal_id: str | None


def apply_script_to_file(
    path: str | Path,
    script: str | Sequence[Op],
    *,
    allow_broken: bool = False,
    dry_run: bool = False,
    journal: bool = True,
) -> FileEdit:
    """Parse (if text), place and check `script` on the file, then write it atomically unless `dry_run`.

    Raises ScriptSyntaxError / EditRefused / SyntaxRefused (all OTError) or FileRefused; on any of them
    the file is untouched.
    """
    file = read_text_file(path)
    ops = parse_script(script) if isinstance(script, str) else list(script)
    edit = apply_edit(file.text, ops, language_for(file.path), allow_broken=allow_broken)
    diff = unified_diff(file.text, edit.after, file.path.name)
    if dry_run or edit.after == file.text:
        return FileEdit(file.path, edit, diff, False, None)
    entry = Journal().record(file.path, file.encode(file.text), file.encode(edit.after)) if journal else None
    atomic_write(file.path, file.encode(edit.after), file.mode)
    return FileEdit(file.path, edit, diff, True, entry)


def state_dir() -> Path:
    """Where the journal lives: $RETAIN_STATE_DIR, else $XDG_STATE_HOME/retain, else ~/.local/state/retain."""
    if env := os.environ.get("RETAIN_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "retain"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Journal:
    """Append-only log of applied edits; the content before each edit is kept by its hash."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or state_dir()
        self.log = self.root / "journal.jsonl"
        self.blobs = self.root / "blobs"

    def record(self, path: Path, before: bytes, after: bytes) -> str:
        """Keep `before` and note the edit; called before the file is written, so nothing is lost."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        blob = self.blobs / _sha256(before)
        if not blob.exists():
            atomic_write(blob, before)
        entry = {
            "id": uuid.uuid4().hex[:12],
            "time": time.time(),
            "path": os.path.realpath(path),
            "before": _sha256(before),
            "after": _sha256(after),
        }
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return entry["id"]

    def entries(self) -> list[dict]:
        """Edits not yet undone, oldest first."""
        if not self.log.exists():
            return []
        records = [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines() if line.strip()]
        undone = {r["undo"] for r in records if "undo" in r}
        return [r for r in records if "id" in r and r["id"] not in undone]

    def undo(self, path: str | Path | None = None, *, force: bool = False) -> tuple[Path, str]:
        """Restore the file of the newest edit (of `path`, if given); returns (path, unified diff)."""
        wanted = os.path.realpath(path) if path is not None else None
        candidates = [e for e in self.entries() if wanted is None or e["path"] == wanted]
        if not candidates:
            raise UndoRefused(f"nothing to undo{f' for {path}' if path is not None else ''}")
        entry = candidates[-1]
        target = Path(entry["path"])
        current = target.read_bytes() if target.exists() else b""
        if _sha256(current) != entry["after"] and not force:
            raise UndoRefused(
                f"{target} changed since the edit was applied; undoing would lose those changes "
                f"(use --force to restore the earlier content anyway)"
            )
        before = (self.blobs / entry["before"]).read_bytes()
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else None
        atomic_write(target, before, mode)
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"undo": entry["id"], "time": time.time()}) + "\n")
        diff = unified_diff(current.decode("utf-8", "replace"), before.decode("utf-8", "replace"), target.name)
        return target, diff
