"""The undo journal: every written edit is logged with the content it replaced, so `agent undo` can restore it.

Content is kept by its hash in `blobs/`; the log is `journal.jsonl`, append-only, under `state_dir()`.
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from pathlib import Path

from tools.state import state_dir
from tools.text_files import (
    FileChanged,
    FileRefused,
    atomic_write,
    describe_os_error,
    digest,
    read_bytes,
    remove_stale_temps,
    unified_diff,
)


class UndoRefused(Exception):
    """There is nothing to undo, or the file changed since the edit."""


def _real(path: str | Path) -> str:
    """The real path, or the absolute one when a folder on the way vanishes while it is resolved."""
    try:
        return os.path.realpath(path)
    except OSError:
        return os.path.abspath(path)


def _never_landed(entry: dict, current: bytes | None) -> bool:
    """Whether the file still holds the content before the edit: its process was killed before the write landed
    (or the same content was put back by hand): there is nothing of it to undo."""
    return current is not None and digest(current) == entry["before"] != entry["after"]


def _is_record(record) -> bool:
    return isinstance(record, dict) and (
        "undo" in record or "void" in record or {"id", "path", "before", "after"} <= set(record)
    )


class Journal:
    """Append-only log of applied edits; the content before each edit is kept by its hash.

    An edit is noted before it is written and voided if the write fails; one whose process was killed before
    its write landed is passed over by undo, its file still holding the content before it. A line torn by a crash
    is skipped with a note in `notes` rather than breaking every later undo."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or state_dir()
        self.log = self.root / "journal.jsonl"
        self.blobs = self.root / "blobs"
        self.notes: list[str] = []

    def keep(self, before: bytes) -> str:
        """Store `before` (before the file is written, so nothing is lost); returns its hash."""
        blob = digest(before)
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            if not (self.blobs / blob).exists():
                atomic_write(self.blobs / blob, before, 0o600)
        except (OSError, ValueError) as exc:
            message = describe_os_error(self.blobs, exc)
            raise FileRefused(f"cannot keep the previous content for undo: {message}") from None
        except FileRefused as exc:
            raise FileRefused(f"cannot keep the previous content for undo: {exc}") from None
        return blob

    def note(self, path: Path, before: str, after: str, mode: int | None) -> str:
        """Log an edit of `path` from blob `before` to content hash `after`; returns its id."""
        entry_id = uuid.uuid4().hex[:12]
        entry = {
            "id": entry_id,
            "time": time.time(),
            "path": _real(path),
            "before": before,
            "after": after,
            "mode": mode,
        }
        self._append(entry)
        return entry_id

    def void(self, entry_id: str) -> None:
        """Mark a noted edit as never written (its write failed)."""
        self._append({"void": entry_id, "time": time.time()})

    def _append(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        try:
            with open(self.log, "a+b") as handle:
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        line = "\n" + line  # the last line was torn by a crash: start a fresh one
                handle.write(line.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise FileRefused(f"cannot write the edit journal: {describe_os_error(self.log, exc)}") from None

    def entries(self) -> list[dict]:
        """Edits not yet undone, oldest first; unreadable lines are skipped and noted in `notes`."""
        try:
            text = self.log.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise UndoRefused(f"cannot read the edit journal: {describe_os_error(self.log, exc)}") from None
        records = []
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not _is_record(record):
                self.notes.append(f"{self.log}:{number}: skipped a damaged journal line (a crash cut it short)")
                continue
            records.append(record)
        ended = {r.get("undo") or r.get("void") for r in records if "undo" in r or "void" in r}
        return [r for r in records if "id" in r and r["id"] not in ended]

    def undo(self, path: str | Path | None = None, *, force: bool = False) -> tuple[Path, str]:
        """Restore the file of the newest edit (of `path`, if given); returns (path, unified diff)."""
        wanted = _real(path) if path is not None else None
        candidates = [e for e in self.entries() if wanted is None or e["path"] == wanted]
        while candidates:
            entry = candidates.pop()
            target = Path(entry["path"])
            remove_stale_temps(target.parent)  # what a writer killed mid-edit left beside the file
            try:
                current, info = read_bytes(target)
            except FileRefused as exc:
                if os.path.lexists(target):
                    raise UndoRefused(f"cannot undo: {exc}") from None
                current, info = None, None
            if not _never_landed(entry, current):
                break
        else:
            raise UndoRefused(f"nothing to undo{f' for {path}' if path is not None else ''}")
        if (current is None or digest(current) != entry["after"]) and not force:
            what = "was deleted" if current is None else "changed"
            raise UndoRefused(
                f"{target} {what} since the edit was applied; undoing would lose those changes "
                f"(use --force to restore the earlier content anyway)"
            )
        try:
            before = (self.blobs / entry["before"]).read_bytes()
        except OSError as exc:
            raise UndoRefused(f"the content before the edit is gone: {describe_os_error(self.blobs, exc)}") from None
        mode = stat.S_IMODE(info.st_mode) if info is not None else entry.get("mode")
        try:
            atomic_write(target, before, mode, expected=current, must_not_exist=current is None)
        except (FileRefused, FileChanged) as exc:
            raise UndoRefused(f"cannot restore {target}: {exc}") from None
        self._append({"undo": entry["id"], "time": time.time()})
        old = (current or b"").decode("utf-8", "replace")
        diff = unified_diff(old, before.decode("utf-8", "replace"), target.name)
        return target, diff
