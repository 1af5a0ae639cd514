"""Edit scripts applied to files on disk: text decoding, prepared edits, safe writes, and a journal for undo.

Scripts count code points in the text a model reads: UTF-8 without the BOM, with CRLF shown as LF when
the whole file uses CRLF. An edit is resolved once into a PreparedEdit (the bytes to write and the bytes
they were computed from); writing it puts the conventions back, keeps the file's mode, and refuses when
the file changed since it was read. Writes go through a temporary file, fsync and rename inside a parent
folder held open by descriptor, so a failed or refused edit leaves the file byte-identical and a folder
swapped for a symlink meanwhile cannot redirect the write. A file with other hard links (or another
owner) is rewritten in place instead, so every link sees the edit. Every applied edit is journaled
(previous content kept by hash) so `agent undo` can restore it.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.ot import Insert, Op, OTError
from tools.ot_script import parse_script
from tools.patch import AppliedEdit, EditRefused, apply_edit
from tools.syntax import language_for

BOM = "\ufeff"
READ_CHUNK = 1 << 20


class FileRefused(Exception):
    """The file cannot be read or written as text (missing, binary, not UTF-8, special, not permitted)."""


class FileChanged(OTError):
    """The file changed between reading it and writing the edit computed from it (exit code 3 in the CLI)."""


class UndoRefused(Exception):
    """There is nothing to undo, or the file changed since the edit."""


@dataclass(frozen=True)
class TextFile:
    path: Path
    text: str  # what scripts count against: no BOM, LF line ends when the file is all CRLF
    bom: bool
    crlf: bool
    mode: int
    raw: bytes  # the bytes read, whose digest a later write checks

    def encode(self, text: str) -> bytes:
        """Bytes for `text` in this file's conventions."""
        if self.crlf:
            text = text.replace("\n", "\r\n")
        return ((BOM if self.bom else "") + text).encode("utf-8")


def describe_os_error(path: str | Path, exc: OSError | ValueError) -> str:
    """An OS error on `path` as a sentence that says what to do."""
    if isinstance(exc, ValueError):
        return f"{path!s:.200}: not a usable path ({exc}); name the file without NUL or other control characters"
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = {
        errno.EACCES: "check its permissions (and those of its folder)",
        errno.EPERM: "check its permissions (and those of its folder)",
        errno.EROFS: "the file system is read-only",
        errno.ENAMETOOLONG: "use a shorter name",
        errno.ENOSPC: "free some disk space",
        errno.ENOENT: "check the path",
        errno.ENOTDIR: "a part of the path is not a folder (or was swapped for a symlink); check the path",
        errno.ELOOP: "a part of the path is a symlink loop or was swapped for a symlink; check the path",
    }.get(exc.errno or 0, "check the path")
    return f"{str(path)[:200]}: {reason.lower()}; {hint}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_regular(path: str | Path) -> int:
    """A read descriptor of a regular file; FileRefused for anything else (never blocks on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileRefused(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FileRefused(f"{path}: is a directory, not a file") from None
    except (OSError, ValueError) as exc:
        raise FileRefused(describe_os_error(path, exc)) from None
    try:
        _check_regular(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: str | Path) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file and its stat; FileRefused for anything else."""
    fd = open_regular(path)
    try:
        return _read_fd(fd, path), os.fstat(fd)
    finally:
        os.close(fd)


def _check_regular(path: str | Path, info: os.stat_result) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise FileRefused(f"{path}: is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused(f"{path}: not a regular file (a FIFO, socket or device); only text files can be read")


def _read_fd(fd: int, path: str | Path) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, READ_CHUNK):
            chunks.append(chunk)
    except OSError as exc:
        raise FileRefused(describe_os_error(path, exc)) from None
    return b"".join(chunks)


def decode_text(path: str | Path, data: bytes) -> str:
    """`data` as UTF-8 text; FileRefused for binary (NUL) or other encodings."""
    if b"\x00" in data:
        raise FileRefused(f"{path}: binary file (contains NUL bytes); only UTF-8 text files can be edited")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileRefused(
            f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); only UTF-8 text files can be edited"
        ) from None


def read_text_file(path: str | Path) -> TextFile:
    path = Path(path)
    data, info = read_bytes(path)
    text = decode_text(path, data)
    bom = text.startswith(BOM)
    text = text.removeprefix(BOM)
    crlf = "\r\n" in text and text.count("\r\n") == text.count("\n")
    if crlf:
        text = text.replace("\r\n", "\n")
    return TextFile(path, text, bom, crlf, stat.S_IMODE(info.st_mode), data)


# -- writing -----------------------------------------------------------------------------------------------


def atomic_write(
    path: str | Path,
    data: bytes,
    mode: int | None = None,
    *,
    expected: bytes | None = None,
    must_not_exist: bool = False,
    root: Path | None = None,
) -> None:
    """Replace `path` with `data` all at once: a reader sees the old file or the new one, never half.

    `expected` (the bytes the new content was computed from) or `must_not_exist` make the write refuse with
    FileChanged, writing nothing, when the file is no longer so just before the rename. With `root`, the
    parent folder is opened from `root` one component at a time without following symlinks, so the write
    cannot land outside `root` whatever is swapped meanwhile; folders missing below `root` are created.
    A file with other hard links or another owner is rewritten in place so its links and owner stay.
    Raises FileRefused for OS errors (permissions, read-only folders, names too long).
    """
    path = Path(path)
    try:
        parent = _open_parent(path, root)
    except (OSError, ValueError) as exc:
        raise FileRefused(describe_os_error(path, exc)) from None
    try:
        current = _current(parent, path, expected, must_not_exist)
        if current is not None and (current.st_nlink > 1 or current.st_uid != os.geteuid()):
            _write_in_place(parent, path, data, expected)
        else:
            _replace(parent, path, data, mode if mode is not None or current is None else current.st_mode)
        os.fsync(parent)
    except OSError as exc:
        raise FileRefused(describe_os_error(path, exc)) from None
    finally:
        os.close(parent)


def _open_parent(path: Path, root: Path | None) -> int:
    """A descriptor of `path`'s folder; with `root`, walked from it without following any symlink."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if root is None:
        return os.open(path.parent, flags)
    parts = path.relative_to(root).parts[:-1]
    fd = os.open(root, flags)
    try:
        for part in parts:
            try:
                next_fd = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o777, dir_fd=fd)
                next_fd = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _current(parent: int, path: Path, expected: bytes | None, must_not_exist: bool) -> os.stat_result | None:
    """The stat of the file now (None if absent), after checking it is still what the edit was computed from."""
    try:
        info = os.stat(path.name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        if expected is not None:
            raise FileChanged(f"{path} was deleted after it was read; nothing was written") from None
        return None
    if must_not_exist:
        raise FileChanged(f"{path} was created by something else after the check; nothing was written")
    if expected is not None:
        _check_unchanged(parent, path, expected)
    return info


def _check_unchanged(parent: int, path: Path, expected: bytes) -> None:
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileChanged(f"{path} was replaced by a symlink after it was read; nothing was written") from None
        raise
    try:
        _check_regular(path, os.fstat(fd))
        same = _sha256(_read_fd(fd, path)) == _sha256(expected)
    finally:
        os.close(fd)
    if not same:
        raise FileChanged(
            f"{path} changed after the edit was computed (another program wrote to it); nothing was written. "
            "Read the file again and redo the edit against its current content"
        )


def _replace(parent: int, path: Path, data: bytes, mode: int | None) -> None:
    tmp = f".retain-{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=parent)
    try:
        try:
            _write_all(fd, data)
            if mode is not None:
                os.fchmod(fd, stat.S_IMODE(mode))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path.name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=parent)
        raise


def _write_in_place(parent: int, path: Path, data: bytes, expected: bytes | None) -> None:
    fd = os.open(path.name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    try:
        _check_regular(path, os.fstat(fd))
        if expected is not None and _sha256(_read_fd(fd, path)) != _sha256(expected):
            raise FileChanged(f"{path} changed after the edit was computed; nothing was written")
        os.lseek(fd, 0, os.SEEK_SET)
        _write_all(fd, data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- diffs -------------------------------------------------------------------------------------------------


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


# -- prepared edits ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedEdit:
    """An edit resolved once: exactly the bytes to write, and the bytes (None: no file) they replace."""

    path: Path
    before: bytes | None
    after: bytes
    mode: int | None
    diff: str
    edit: AppliedEdit | None = None  # the applier's result, for an edit script (None: a whole-file write)

    @property
    def changes(self) -> bool:
        return self.after != self.before


@dataclass
class FileEdit:
    path: Path
    edit: AppliedEdit
    diff: str
    written: bool
    journal_id: str | None


def prepare_script(
    path: str | Path,
    script: str | Sequence[Op],
    *,
    allow_broken: bool = False,
    deadline: float | None = None,
) -> PreparedEdit:
    """Parse (if text), place and check `script` on the file as it is now; nothing is written.

    Raises ScriptSyntaxError / EditRefused / SyntaxRefused (all OTError) or FileRefused."""
    file = read_text_file(path)
    _check_writable(file.path, file.mode)
    ops = parse_script(script) if isinstance(script, str) else list(script)
    if any(isinstance(op, Insert) and "\x00" in op.text for op in ops):
        raise EditRefused(
            f"refused: the edit inserts a NUL character (\\u0000), which would turn {file.path.name} into a binary "
            "file that later edits refuse; the file is unchanged. Write the character as an escape of the file's "
            "language instead (e.g. \"\\\\0\" or \"\\\\x00\" in a string literal)"
        )
    edit = apply_edit(file.text, ops, language_for(file.path), allow_broken=allow_broken, deadline=deadline)
    diff = unified_diff(file.text, edit.after, file.path.name)
    return PreparedEdit(file.path, file.raw, file.encode(edit.after), file.mode, diff, edit)


def prepare_content(path: Path, content: str, *, overwrite: bool) -> PreparedEdit:
    """A whole-file write of `content` to `path` (a new file, or a replacement when `overwrite`)."""
    try:
        exists = os.path.lexists(path)
    except ValueError as exc:
        raise FileRefused(describe_os_error(path, exc)) from None
    if not exists:
        return PreparedEdit(path, None, content.encode("utf-8"), None, unified_diff("", content, path.name))
    if not overwrite:
        raise FileRefused(f"{path.name} already exists; change it with an edit script, or overwrite it to replace it")
    data, info = read_bytes(path)
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


def write_prepared(prepared: PreparedEdit, *, journal: bool = True, root: Path | None = None) -> str | None:
    """Write exactly `prepared.after`, refusing (FileChanged, nothing written) when the file is no longer the
    one it was computed from; returns the journal entry's id (None without a journal or a previous file)."""
    before = prepared.before
    keep = Journal() if journal and before is not None else None
    blob = keep.keep(before) if keep is not None and before is not None else None
    atomic_write(
        prepared.path,
        prepared.after,
        prepared.mode,
        expected=prepared.before,
        must_not_exist=prepared.before is None,
        root=root,
    )
    if keep is None or blob is None:
        return None
    return keep.note(prepared.path, blob, _sha256(prepared.after), prepared.mode)


def apply_script_to_file(
    path: str | Path,
    script: str | Sequence[Op],
    *,
    allow_broken: bool = False,
    dry_run: bool = False,
    journal: bool = True,
    deadline: float | None = None,
) -> FileEdit:
    """Prepare `script` on the file, then write it unless `dry_run`. On any refusal the file is untouched."""
    prepared = prepare_script(path, script, allow_broken=allow_broken, deadline=deadline)
    applied = prepared.edit
    assert applied is not None  # a script's preparation carries the applier's result
    if dry_run or not prepared.changes:
        return FileEdit(prepared.path, applied, prepared.diff, False, None)
    entry = write_prepared(prepared, journal=journal)
    return FileEdit(prepared.path, applied, prepared.diff, True, entry)


# -- the journal -------------------------------------------------------------------------------------------


def _real(path: str | Path) -> str:
    """The real path, or the absolute one when a folder on the way vanishes while it is resolved."""
    try:
        return os.path.realpath(path)
    except OSError:
        return os.path.abspath(path)


def _is_record(record) -> bool:
    return isinstance(record, dict) and ("undo" in record or {"id", "path", "before", "after"} <= set(record))


def state_dir() -> Path:
    """Where the journal lives: $RETAIN_STATE_DIR, else $XDG_STATE_HOME/retain, else ~/.local/state/retain."""
    if env := os.environ.get("RETAIN_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "retain"


class Journal:
    """Append-only log of applied edits; the content before each edit is kept by its hash.

    An edit is noted only once it is written, so a failed write leaves no entry; a line torn by a crash is
    skipped with a note in `notes` rather than breaking every later undo."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or state_dir()
        self.log = self.root / "journal.jsonl"
        self.blobs = self.root / "blobs"
        self.notes: list[str] = []

    def keep(self, before: bytes) -> str:
        """Store `before` (before the file is written, so nothing is lost); returns its hash."""
        digest = _sha256(before)
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            if not (self.blobs / digest).exists():
                atomic_write(self.blobs / digest, before, 0o600)
        except (OSError, ValueError) as exc:
            message = describe_os_error(self.blobs, exc)
            raise FileRefused(f"cannot keep the previous content for undo: {message}") from None
        except FileRefused as exc:
            raise FileRefused(f"cannot keep the previous content for undo: {exc}") from None
        return digest

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
        undone = {r["undo"] for r in records if "undo" in r}
        return [r for r in records if "id" in r and r["id"] not in undone]

    def undo(self, path: str | Path | None = None, *, force: bool = False) -> tuple[Path, str]:
        """Restore the file of the newest edit (of `path`, if given); returns (path, unified diff)."""
        wanted = _real(path) if path is not None else None
        candidates = [e for e in self.entries() if wanted is None or e["path"] == wanted]
        if not candidates:
            raise UndoRefused(f"nothing to undo{f' for {path}' if path is not None else ''}")
        entry = candidates[-1]
        target = Path(entry["path"])
        try:
            current, info = read_bytes(target)
        except FileRefused as exc:
            if os.path.lexists(target):
                raise UndoRefused(f"cannot undo: {exc}") from None
            current, info = None, None
        if (current is None or _sha256(current) != entry["after"]) and not force:
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
