"""What the agent may do to a workspace: read, edit, create, list, search, run a command.

Every path is resolved (symlinks too) and must land inside the workspace root, else the tool refuses;
writes then walk from the root by descriptor without following symlinks, so a folder swapped for a
symlink after the check cannot carry them outside. Each tool returns a ToolResult: the observation the
model reads, and a status the loop and report use. Edit refusals and corrections come from the applier
and are passed on verbatim: they are written for the model to fix its own script. Tools are bounded:
reads stream, a regex search and the applier have a time budget, command output is capped as it arrives,
and `deadline` (the run's wall-clock end) bounds them all.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import regex as regex_engine  # the `re` syntax, with a timeout: a backtracking pattern cannot hang a search

from tools.edits import PreparedEdit, prepare_content, prepare_edit, write_prepared
from tools.formats import OT, Format
from tools.ot import OTError
from tools.text_files import (
    READ_CHUNK,
    FileRefused,
    decode_text,
    describe_os_error,
    open_regular,
    read_text_file,
    text_lines,
)

MAX_READ_CHARS = 60_000  # a read shows at most this much text; ask for a line range to see the rest
MAX_LIST_ENTRIES = 300
MAX_SEARCH_MATCHES = 100
MAX_SEARCH_FILE_BYTES = 1_000_000
MAX_LINE_CHARS = 200  # search hits longer than this are cut
SEARCH_TIME_BUDGET = 10.0  # seconds one search may take
LIST_TIME_BUDGET = 10.0  # seconds one walk of the workspace may take (list, search, the file picker)
MAX_SHELL_OUTPUT = 10_000  # code points of command output shown: the head and the tail
MAX_SHELL_STREAM_BYTES = 64 << 20  # a command writing more than this is killed
SKIPPED_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".mypy_cache", ".pytest_cache"}

OK, ERROR, REFUSED = "ok", "error", "refused"


class PathRefused(Exception):
    """A path that leaves the workspace (directly, through `..`, or through a symlink), or no usable path."""


@dataclass
class ToolResult:
    status: str  # OK, ERROR (the tool ran and failed, or the input was bad) or REFUSED (not allowed)
    output: str  # the observation, written for the model
    data: dict = field(default_factory=dict)  # structured facts for the report (file, corrections, exit code…)
    file_text: str | None = None  # an edited or created file's new text, to compare against rewriting it whole
    prepared: PreparedEdit | None = None  # a previewed edit, written exactly as shown by Workspace.commit


class Workspace:
    """A directory the agent works in; all tools take paths relative to it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise FileNotFoundError(f"workspace {root} is not a directory")
        self.deadline: float | None = None  # time.monotonic() by which tool work must stop (the run's timeout)

    def resolve(self, path: str) -> Path:
        """The real path of `path` (relative to the root, or absolute), refused unless inside the workspace."""
        if not isinstance(path, str) or not path.strip():
            raise PathRefused("a path is needed (relative to the workspace root)")
        _check_path_text(path)
        try:
            real = Path(os.path.realpath(self.root / path))
        except (OSError, ValueError) as exc:
            raise PathRefused(describe_os_error(path, exc)) from None
        if not real.is_relative_to(self.root):
            raise PathRefused(
                f"{path}: refused, it resolves to {real}, outside the workspace {self.root}; "
                "only paths inside the workspace can be read or changed"
            )
        return real

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    def time_left(self, limit: float) -> float:
        """`limit` seconds, or less when the run's deadline comes sooner (never below a tenth of a second)."""
        if self.deadline is None:
            return limit
        return max(0.1, min(limit, self.deadline - time.monotonic()))

    def glob(self, pattern: str) -> Matches:
        """Paths matching `pattern` under the root, without descending into VCS, cache or dependency folders
        (a walk that prunes them, so a large node_modules costs nothing) or following links outside; bounded
        in time (LIST_TIME_BUDGET, or less when the run's deadline is sooner)."""
        if not isinstance(pattern, str) or not pattern:
            raise PathRefused("a glob relative to the workspace is needed, e.g. **/*.py")
        _check_path_text(pattern)
        if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise PathRefused(f"{pattern!r}: a glob relative to the workspace is needed, without '..'")
        matches = _glob_regex(pattern).fullmatch
        found = Matches()
        deadline = time.monotonic() + self.time_left(LIST_TIME_BUDGET)
        for entry in _walk(self.root, deadline, found):
            path = Path(entry.path)
            if matches(path.relative_to(self.root).as_posix()) and (not entry.is_symlink() or self._inside(path)):
                found.add(path, entry)
        found.paths.sort()
        return found

    def _inside(self, path: Path) -> bool:
        """Whether `path` resolves inside the root (False when it vanishes while being resolved)."""
        try:
            return Path(os.path.realpath(path)).is_relative_to(self.root)
        except OSError:
            return False

    # -- tools ---------------------------------------------------------------------------------------

    def read(self, path: str, start_line: int | None = None, end_line: int | None = None) -> ToolResult:
        """The file's text exactly as edit scripts count it (no line numbers added), optionally a line range.

        A large file or a line range is streamed: memory stays bounded however big the file is."""
        try:
            target = self.resolve(path)
            name = self.rel(target)
            if start_line is None and end_line is None:
                whole = self._read_whole(target, name)
                if whole is not None:
                    return whole
            shown = _read_lines(target, max(1, start_line or 1), end_line, self.root)
        except (PathRefused, FileRefused) as exc:
            return _refusal(exc)
        if shown.first > max(shown.total_lines, 1):
            message = f"{name} has {shown.total_lines} lines; line {shown.first} does not exist"
            return ToolResult(ERROR, message, {"file": name})
        header = (
            f"{name}: lines {shown.first}-{shown.last} of {shown.total_lines} ({shown.total_chars} code points in "
            f"all; line {shown.first} starts at code point {shown.offset})"
        )
        if shown.line_cut:
            header += f"\n(line {shown.last} is longer than {MAX_READ_CHARS} code points: only its start is shown)"
        elif shown.last < min(shown.stop, shown.total_lines):
            header += f"\n(cut at {MAX_READ_CHARS} code points: read from line {shown.last + 1} to see more)"
        return ToolResult(OK, f"{header}\n{shown.text}", {"file": name})

    def _read_whole(self, target: Path, name: str) -> ToolResult | None:
        """The whole file when it is small enough to show at once, else None (a line range is shown)."""
        try:
            size = os.stat(target).st_size
        except (OSError, ValueError) as exc:
            raise FileRefused(describe_os_error(target, exc)) from None
        if size > 4 * MAX_READ_CHARS:  # UTF-8 takes at most 4 bytes per code point
            return None
        text = read_text_file(target, self.root).text
        if len(text) > MAX_READ_CHARS:
            return None
        header = f"{name}: {len(text_lines(text))} lines, {len(text)} code points"
        return ToolResult(OK, f"{header}\n{text}", {"file": name})

    def edit(self, path: str, script: str, *, dry_run: bool = False, edit_format: Format = OT) -> ToolResult:
        """Apply an edit written in `edit_format` (`script`: an edit script through the tolerant applier, or another
        format's blocks through its applier); corrections and refusals go back verbatim.

        With `dry_run` nothing is written and the result carries the prepared edit for `commit`."""
        try:
            target = self.resolve(path)
            prepared = prepare_edit(target, script, edit_format, deadline=self.deadline, root=self.root)
        except (PathRefused, FileRefused) as exc:
            return _refusal(exc, {"file": path, "script": script})
        except OTError as exc:
            return _edit_error(exc, path, script)
        name = self.rel(prepared.path)
        placed = prepared.placed
        assert placed is not None  # a script's preparation carries the applier's result
        notes_said = [c.message for c in placed.corrections] + placed.notes
        data = {
            "file": name,
            "script": script,
            "corrections": [c.to_dict() for c in placed.corrections],
            "notes": notes_said,
            "diff": prepared.diff,
            "written": False,
        }
        notes = "".join(f"note: {line}\n" for line in notes_said)
        if not prepared.changes:
            what = "script" if edit_format.edit_script else "edit"
            return ToolResult(OK, f"{notes}the {what} leaves {name} unchanged", data)
        preview = ToolResult(OK, f"would change {name}:\n{notes}{prepared.diff}", data, placed.after, prepared)
        return preview if dry_run else self.commit(preview)

    def create(self, path: str, content: str, *, overwrite: bool = False, dry_run: bool = False) -> ToolResult:
        """Write a new file; an existing one is replaced only with `overwrite` (and journaled for undo).

        `dry_run` checks the same and returns the diff in `data["diff"]` and the prepared write for `commit`,
        writing nothing."""
        try:
            target = self.resolve(path)
            name = self.rel(target)
            _check_content(content)
            prepared = prepare_content(target, content, overwrite=overwrite, root=self.root)
        except PathRefused as exc:
            return _refusal(exc)
        except FileRefused as exc:
            return ToolResult(ERROR, str(exc), {"file": path})
        data = {"file": name, "diff": prepared.diff, "notes": _unshown(prepared)}
        preview = ToolResult(OK, f"would write {name}:\n{prepared.diff}", data, content, prepared)
        return preview if dry_run else self.commit(preview)

    def commit(self, preview: ToolResult) -> ToolResult:
        """Write a previewed edit exactly as it was shown; refused, writing nothing, if the file changed since."""
        prepared, data = preview.prepared, dict(preview.data)
        if prepared is None:
            return ToolResult(ERROR, "nothing to write: this result was not a prepared edit", data)
        name = data["file"]
        try:
            write_prepared(prepared, root=self.root)
        except FileRefused as exc:
            return ToolResult(ERROR, f"{exc}\nThe file is unchanged.", data)
        except OTError as exc:  # FileChanged
            return ToolResult(ERROR, str(exc), data)
        if prepared.placed is None:
            written = preview.file_text or ""
            return ToolResult(OK, f"wrote {name} ({len(written)} code points)", data, preview.file_text)
        data["written"] = True
        notes = "".join(f"note: {line}\n" for line in data["notes"])
        return ToolResult(OK, f"applied to {name}:\n{notes}{prepared.diff}", data, preview.file_text)

    def list(self, pattern: str = "**/*") -> ToolResult:
        """Paths matching a glob (relative to the root), directories with a trailing `/`, bounded."""
        try:
            found = self.glob(pattern)
        except PathRefused as exc:
            return _refusal(exc)
        entries = [self.rel(path) + ("/" if path in found.folders else "") for path in found.paths]
        data = {"count": len(entries), "timed_out": found.timed_out}
        if not entries:
            return ToolResult(OK, f"no paths match {pattern}{found.notes()}", data)
        shown = entries[:MAX_LIST_ENTRIES]
        more = f"\n(… {len(entries) - len(shown)} more; narrow the pattern)" if len(entries) > len(shown) else ""
        return ToolResult(OK, "\n".join(shown) + more + found.notes(), data)

    def search(self, regex: str, pattern: str = "**/*") -> ToolResult:
        """Lines matching a Python regex in the text files matching a glob: `path:line: text`, bounded in
        matches shown and in time (SEARCH_TIME_BUDGET, or less when the run's deadline is sooner)."""
        compiled = _compile_search(regex)
        if isinstance(compiled, ToolResult):
            return compiled
        try:
            found = self.glob(pattern)
            paths = [path for path in found.paths if path in found.files]
        except PathRefused as exc:
            return _refusal(exc)
        budget = self.time_left(SEARCH_TIME_BUDGET)
        deadline = time.monotonic() + budget
        hits: list[str] = []
        total = 0
        try:
            for path in paths:
                for number, line in _searchable_lines(path, self.root):
                    if compiled.search(line, timeout=max(0.001, deadline - time.monotonic())):
                        total += 1
                        if len(hits) < MAX_SEARCH_MATCHES:
                            cut = line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + " …"
                            hits.append(f"{self.rel(path)}:{number}: {cut}")
        except TimeoutError:
            so_far = "".join(f"\n{hit}" for hit in hits)
            message = (
                f"the search for {regex!r} stopped after {budget:g} s: the pattern may backtrack a lot (like (a+)+) "
                f"or the glob {pattern!r} covers too much; simplify the regex or narrow the glob. "
                f"{total} matches before it stopped:{so_far}"
            )
            return ToolResult(ERROR, message, {"matches": total, "timed_out": True})
        if not hits:
            return ToolResult(OK, f"no matches for {regex!r} in {pattern}{found.notes()}", {"matches": 0})
        more = f"\n(… {total - len(hits)} more matches; narrow the search)" if total > len(hits) else ""
        return ToolResult(OK, "\n".join(hits) + more + found.notes(), {"matches": total})

    def shell(self, command: str, timeout: float = 120) -> ToolResult:
        """Run `command` with bash in the workspace root; output (stdout+stderr) is cut to its head and tail
        as it arrives, and the command is killed when it runs out of time or writes too much."""
        timeout = self.time_left(timeout)
        try:
            process = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a timeout ends everything it started
            )
        except (OSError, ValueError) as exc:
            return ToolResult(ERROR, f"the command could not be started: {exc}", {"exit_code": None})
        capture = _OutputCapture(process)
        ends, timed_out = time.monotonic() + timeout, False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        capture.finish(timeout=None if timed_out else max(0.0, ends - time.monotonic()))
        process.wait()
        output = capture.text()
        data = {"exit_code": process.returncode, "timed_out": timed_out}
        if timed_out:
            return ToolResult(ERROR, f"timed out after {timeout:g} s and was killed; output so far:\n{output}", data)
        if capture.overflowed:
            limit = MAX_SHELL_STREAM_BYTES >> 20
            return ToolResult(ERROR, f"killed: it wrote more than {limit} MiB of output; output kept:\n{output}", data)
        status = OK if process.returncode == 0 else ERROR
        return ToolResult(status, f"exit code {process.returncode}\n{output}", data)


def _unshown(prepared: PreparedEdit) -> list[str]:
    """A note when the content a whole-file write replaces is not text (so the diff does not show it)."""
    try:
        if prepared.before is not None:
            decode_text(prepared.path, prepared.before)
    except FileRefused as exc:
        return [f"the current content is not shown: {exc}"]
    return []


def _check_path_text(path: str) -> None:
    """Refuse characters no file name can hold (NUL) or that cannot be encoded (half a surrogate pair)."""
    if "\x00" in path:
        raise PathRefused(f"{path!r}: a path cannot contain a NUL character; name the file as it is on disk")
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        raise PathRefused(f"{path!r}: the path has characters that cannot be encoded; check the name") from None


def _check_content(content: str) -> None:
    """New file text must be encodable text without NUL (which would make it a binary file)."""
    if "\x00" in content:
        raise FileRefused("the content has a NUL character (\\u0000), which would make a binary file; remove it")
    try:
        content.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FileRefused(
            f"the content has half of a UTF-16 surrogate pair at code point {exc.start}; write the character itself"
        ) from None


@dataclass
class _Lines:
    """A line range read by streaming a file: the text shown and the figures the header gives."""

    first: int
    stop: float  # the last line asked for (inf: to the end)
    last: int = 0
    text: str = ""
    offset: int = 0  # code points before line `first`
    total_lines: int = 0
    total_chars: int = 0
    line_cut: bool = False  # the one line shown is longer than MAX_READ_CHARS and was cut


def _read_lines(path: Path, first: int, end_line: int | None, root: Path) -> _Lines:
    """Lines `first`..`end_line` of a text file (at most MAX_READ_CHARS code points, at least part of one
    line), read in chunks: the counts cover the whole file, the memory only what is shown."""
    result = _Lines(first, float("inf") if end_line is None else end_line)
    decoder = codecs.getincrementaldecoder("utf-8")()
    pieces: list[str] = []
    line, seen, read_bytes, newlines, crlf, shown = 1, 0, 0, 0, 0, 0
    last_char, collecting, done, offset = "", False, False, 0
    fd = open_regular(path, root)
    try:
        while True:
            chunk = os.read(fd, READ_CHUNK)
            text = _decode_chunk(path, decoder, chunk, read_bytes)
            if read_bytes == 0 and text.startswith("\ufeff"):
                text = text[1:]
            read_bytes += len(chunk)
            crlf += text.count("\r\n") + (last_char == "\r" and text.startswith("\n"))
            newlines += text.count("\n")
            pos = 0
            while not done and pos < len(text):
                if not collecting:
                    pos = _skip_lines(text, pos, first - line)
                    if pos < 0:
                        line += text.count("\n")
                        break
                    line, collecting, offset = first, True, seen + pos
                    continue
                end = text.find("\n", pos)
                piece = text[pos:] if end < 0 else text[pos : end + 1]
                room = MAX_READ_CHARS - shown
                if len(piece) > room:
                    if line == first:
                        pieces.append(piece[:room])
                        result.line_cut = True
                    done = True
                    break
                pieces.append(piece)
                shown += len(piece)
                result.last = line
                if end < 0:
                    break
                line, pos = line + 1, end + 1
                done = line > result.stop
            seen += len(text)
            last_char = text[-1:] or last_char
            if not chunk:
                break
    except OSError as exc:
        raise FileRefused(describe_os_error(path, exc)) from None
    finally:
        os.close(fd)
    all_crlf = newlines > 0 and crlf == newlines
    result.last = max(result.last, first) if pieces else first
    result.text = "".join(pieces).replace("\r\n", "\n") if all_crlf else "".join(pieces)
    result.offset = offset - (first - 1) if all_crlf else offset
    result.total_chars = seen - crlf if all_crlf else seen
    result.total_lines = newlines + (seen > 0 and last_char != "\n")
    return result


def _decode_chunk(path: Path, decoder: codecs.IncrementalDecoder, chunk: bytes, at: int) -> str:
    if b"\x00" in chunk:
        decode_text(path, chunk)  # refuses it as binary
    try:
        return decoder.decode(chunk, final=not chunk)
    except UnicodeDecodeError as exc:
        raise FileRefused(
            f"{path}: not UTF-8 text (invalid byte near offset {at + max(exc.start, 0)}); only UTF-8 text files can "
            "be read"
        ) from None


def _skip_lines(text: str, pos: int, count: int) -> int:
    """The index in `text` after `count` more newlines from `pos`, or -1 when `text` has fewer."""
    if count <= 0:
        return pos
    if text.count("\n", pos) < count:
        return -1
    for _ in range(count):
        pos = text.index("\n", pos) + 1
    return pos


@dataclass
class Matches:
    """What a walk of the workspace found, and what it could not look at."""

    paths: list[Path] = field(default_factory=list)
    folders: set[Path] = field(default_factory=set)  # of `paths`, those that are folders (or links to one)
    files: set[Path] = field(default_factory=set)  # of `paths`, those that are regular files (or links to one)
    unreadable: int = 0  # folders that could not be opened (gone, not permitted, a path too long to name)
    timed_out: bool = False  # the walk stopped at its time budget: `paths` is what it found until then

    def add(self, path: Path, entry: os.DirEntry) -> None:
        """Record a match, its kind from the walk (a path too long to name can still be listed)."""
        self.paths.append(path)
        folder, file = _kind(entry)
        if folder:
            self.folders.add(path)
        elif file:
            self.files.add(path)

    def notes(self) -> str:
        """What the model should know about the paths it was not shown ("" when the walk saw everything)."""
        notes = []
        if self.timed_out:
            notes.append("the walk stopped at its time budget: narrow the pattern to see the rest")
        if self.unreadable:
            folders = "1 folder" if self.unreadable == 1 else f"{self.unreadable} folders"
            notes.append(f"{folders} could not be read (not permitted, gone, or nested too deep to name)")
        return "".join(f"\n({note})" for note in notes)


def _walk(root: Path, deadline: float, seen: Matches) -> Iterator[os.DirEntry]:
    """Everything under `root`, depth first with a stack, not recursion: a tree thousands of folders deep is
    walked like any other. Links are listed, never descended into."""
    stack = [root]
    while stack:
        if time.monotonic() > deadline:
            seen.timed_out = True
            return
        folder = stack.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda entry: entry.name, reverse=True)
        except OSError:
            seen.unreadable += 1
            continue
        for entry in entries:
            is_folder = _kind(entry)[0]
            if is_folder and entry.name in SKIPPED_DIRS:
                continue
            yield entry
            if is_folder and not entry.is_symlink():
                stack.append(Path(entry.path))


def _kind(entry: os.DirEntry) -> tuple[bool, bool]:
    """(a folder or a link to one, a regular file or a link to one); an entry gone since the scan is neither."""
    try:
        return entry.is_dir(), entry.is_file()
    except OSError:
        return False, False


def _compile_search(regex: str):
    """The compiled pattern, or an ERROR result saying what is wrong with it."""
    if not isinstance(regex, str) or not regex:
        return ToolResult(ERROR, "a regular expression to search for is needed")
    try:
        return regex_engine.compile(regex)
    except (regex_engine.error, ValueError, OverflowError) as exc:
        return ToolResult(ERROR, f"invalid regular expression {regex!r}: {exc}")
    except RecursionError:
        return ToolResult(ERROR, f"invalid regular expression {regex[:80]!r}…: it nests too deeply; simplify it")


def _searchable_lines(path: Path, root: Path):
    """(line number, line) of a text file inside `root` small enough to search; nothing for other files."""
    try:
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(root) or real.stat().st_size > MAX_SEARCH_FILE_BYTES:
            return
        text = read_text_file(real, root).text
    except (OSError, FileRefused):
        return
    yield from enumerate((row.removesuffix("\n") for row in text_lines(text)), 1)


class _OutputCapture:
    """A command's output read as it arrives, keeping only its head and its tail (bounded memory); the
    process group is killed when the output passes MAX_SHELL_STREAM_BYTES."""

    KEEP = 4 * MAX_SHELL_OUTPUT  # bytes kept at each end: enough for MAX_SHELL_OUTPUT code points

    def __init__(self, process: subprocess.Popen) -> None:
        if process.stdout is None:
            raise ValueError("the shell's output must be a pipe (stdout=subprocess.PIPE)")
        self.process, self.stdout = process, process.stdout
        self.head, self.tail = bytearray(), bytearray()
        self.total = 0
        self.overflowed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        fd = self.stdout.fileno()
        try:
            while chunk := os.read(fd, 65536):
                self._add(chunk)
                if self.total > MAX_SHELL_STREAM_BYTES and not self.overflowed:
                    self.overflowed = True
                    _kill_group(self.process)
        except OSError:  # the pipe was closed under it: a child that outlived its group kept it open
            return

    def _add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.KEEP - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        if len(self.tail) > 2 * self.KEEP:
            del self.tail[: -self.KEEP]

    def finish(self, timeout: float | None) -> None:
        """Wait for the output to end; after a timeout (None) or when children keep it open, kill the group."""
        if timeout is None:
            _kill_group(self.process)
        else:
            self._reader.join(timeout)
        if self._reader.is_alive():
            _kill_group(self.process)
        self._reader.join(5)
        self.stdout.close()

    def text(self) -> str:
        if self.total == len(self.head) + len(self.tail):
            return _truncate((self.head + self.tail).decode("utf-8", errors="replace"))
        head_len, tail_len = MAX_SHELL_OUTPUT * 2 // 5, MAX_SHELL_OUTPUT * 3 // 5
        head = self.head.decode("utf-8", errors="replace")[:head_len]
        tail = self.tail.decode("utf-8", errors="replace")[-tail_len:]
        note = (
            f"[… output cut: {self.total} bytes in all; showing the first {len(head)} and the last {len(tail)} "
            "code points …]"
        )
        return f"{head}\n{note}\n{tail}"


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob as a regular expression: `*` and `?` stay within one path segment, `**/` spans any folders,
    `[…]` is a character class unless it is not a valid one (then the `[` is literal)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif (group := _glob_class(pattern, i)) is not None:
            out.append(group[0])
            i = group[1]
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _glob_class(pattern: str, i: int) -> tuple[str, int] | None:
    """The glob class `[…]` at `pattern[i]` as (regex class, index after it), or None when there is none or
    it is not a valid class (like `[z-a]`)."""
    end = pattern.find("]", i + 2) if pattern[i] == "[" else -1
    if end < 0:
        return None
    body = pattern[i + 1 : end]
    negate = body.startswith("!")
    body = body[1:] if negate else body
    escaped = "".join("\\" + ch if ch in "\\[]^&~|" else ch for ch in body)
    group = f"[{'^' if negate else ''}{escaped}]"
    try:
        re.compile(group)
    except re.error:
        return None
    return group, end + 1


def _refusal(exc: Exception, data: dict | None = None) -> ToolResult:
    status = REFUSED if isinstance(exc, PathRefused) else ERROR
    return ToolResult(status, str(exc), data or {})


def _edit_error(exc: OTError, path: str, script: str) -> ToolResult:
    message = str(exc)
    if "unchanged" not in message:
        message += "\nThe file is unchanged."
    return ToolResult(ERROR, message, {"file": path, "script": script, "corrections": []})


def _truncate(text: str) -> str:
    if len(text) <= MAX_SHELL_OUTPUT:
        return text
    head, tail = MAX_SHELL_OUTPUT * 2 // 5, MAX_SHELL_OUTPUT * 3 // 5
    cut = len(text) - head - tail
    note = f"[… {cut} code points of output cut; showing the first {head} and the last {tail} …]"
    return f"{text[:head]}\n{note}\n{text[-tail:]}"
