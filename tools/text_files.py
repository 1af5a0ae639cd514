"""Files as the text edit scripts count against, and writes that land whole or not at all.

Scripts count code points in the text a model reads: UTF-8 without the BOM, with CRLF shown as LF when
the whole file uses CRLF; `TextFile.encode` puts those conventions back. Binary (NUL) and non-UTF-8 files,
folders, FIFOs and devices are refused. Writes go through a temporary file, fsync and rename inside a
parent folder held open by descriptor, so a failed or refused write leaves the file byte-identical and a
folder swapped for a symlink meanwhile cannot redirect it. A file with other hard links (or another
owner) is rewritten in place instead, so every link sees the change.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from tools.ot import OTError

BOM = "\ufeff"
READ_CHUNK = 1 << 20


class FileRefused(Exception):
    """The file cannot be read or written as text (missing, binary, not UTF-8, special, not permitted)."""


class FileChanged(OTError):
    """The file changed between reading it and writing the edit computed from it (exit code 3 in the CLI)."""


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


def digest(data: bytes) -> str:
    """The SHA-256 of `data`, as hex: how a write checks the file is still what it read, and how the journal
    names kept content."""
    return hashlib.sha256(data).hexdigest()


def open_regular(path: str | Path, root: Path | None = None) -> int:
    """A read descriptor of a regular file; FileRefused for anything else (never blocks on a FIFO).

    With `root` (a folder `path` is inside, `path` free of symlinks, as a workspace resolves it), every folder
    on the way and the file are opened from `root` without following a symlink: a path swapped for a link after
    it was checked is refused rather than read outside `root`."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        if root is None:
            fd = os.open(path, flags)
        else:
            parent = _open_parent(Path(path), root, create=False)
            try:
                fd = os.open(Path(path).name, flags | os.O_NOFOLLOW, dir_fd=parent)
            finally:
                os.close(parent)
    except FileNotFoundError:
        raise FileRefused(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FileRefused(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        if root is not None and exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise FileRefused(
                f"{path}: refused, it was replaced by a symlink while being opened; nothing outside the workspace is "
                "read (read it again if the change was meant)"
            ) from None
        raise FileRefused(describe_os_error(path, exc)) from None
    except ValueError as exc:
        raise FileRefused(describe_os_error(path, exc)) from None
    try:
        _check_regular(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: str | Path, root: Path | None = None) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file and its stat; FileRefused for anything else (`root`: as `open_regular`)."""
    fd = open_regular(path, root)
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


def read_text_file(path: str | Path, root: Path | None = None) -> TextFile:
    path = Path(path)
    data, info = read_bytes(path, root)
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
        remove_stale_temps(parent)
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


def _open_parent(path: Path, root: Path | None, create: bool = True) -> int:
    """A descriptor of `path`'s folder; with `root`, walked from it without following any symlink, making
    the folders that are missing when `create`."""
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
                if not create:
                    raise
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
        same = digest(_read_fd(fd, path)) == digest(expected)
    finally:
        os.close(fd)
    if not same:
        raise FileChanged(
            f"{path} changed after the edit was computed (another program wrote to it); nothing was written. "
            "Read the file again and redo the edit against its current content"
        )


TEMP_PREFIX = ".retain-"  # a temporary file being written: .retain-PID-RANDOM.tmp, renamed over its target
_TEMP = re.compile(r"\.retain-(?P<pid>\d+)-[0-9a-f]+\.tmp")


def _replace(parent: int, path: Path, data: bytes, mode: int | None) -> None:
    tmp = f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
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


def remove_stale_temps(folder: int | Path) -> None:
    """Remove the temporary files that writers killed before their rename left in `folder` (a descriptor or a
    path): those of processes no longer alive. A live writer's file is left alone."""
    if isinstance(folder, Path):
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                remove_stale_temps(fd)
            finally:
                os.close(fd)
        return
    for name in os.listdir(folder):
        found = _TEMP.fullmatch(name)
        if found and not _alive(int(found["pid"])):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _write_in_place(parent: int, path: Path, data: bytes, expected: bytes | None) -> None:
    fd = os.open(path.name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    try:
        _check_regular(path, os.fstat(fd))
        if expected is not None and digest(_read_fd(fd, path)) != digest(expected):
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
