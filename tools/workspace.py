"""What the agent may do to a workspace: read, edit, create, list, search, run a command.

Every path is resolved (symlinks too) and must land inside the workspace root, else the tool refuses.
Each tool returns a ToolResult: the observation the model reads, and a status the loop and report use.
Edit refusals and corrections come from the applier and are passed on verbatim: they are written for
the model to fix its own script.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tools.edit_file import (
    FileRefused,
    Journal,
    apply_script_to_file,
    atomic_write,
    read_text_file,
    text_lines,
    unified_diff,
)
from tools.ot import OTError

MAX_READ_CHARS = 60_000  # a read shows at most this much text; ask for a line range to see the rest
MAX_LIST_ENTRIES = 300
MAX_SEARCH_MATCHES = 100
MAX_SEARCH_FILE_BYTES = 1_000_000
MAX_LINE_CHARS = 200  # search hits longer than this are cut
MAX_SHELL_OUTPUT = 10_000  # code points of command output shown: the head and the tail
SKIPPED_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".mypy_cache", ".pytest_cache"}

OK, ERROR, REFUSED = "ok", "error", "refused"


class PathRefused(Exception):
    """A path that leaves the workspace (directly, through `..`, or through a symlink)."""


@dataclass
class ToolResult:
    status: str  # OK, ERROR (the tool ran and failed, or the input was bad) or REFUSED (not allowed)
    output: str  # the observation, written for the model
    data: dict = field(default_factory=dict)  # structured facts for the report (file, corrections, exit code…)
    file_text: str | None = None  # an edited or created file's new text, to compare against rewriting it whole


class Workspace:
    """A directory the agent works in; all tools take paths relative to it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise FileNotFoundError(f"workspace {root} is not a directory")

    def resolve(self, path: str) -> Path:
        """The real path of `path` (relative to the root, or absolute), refused unless inside the workspace."""
        if not isinstance(path, str) or not path.strip():
            raise PathRefused("a path is needed (relative to the workspace root)")
        real = Path(os.path.realpath(self.root / path))
        if not real.is_relative_to(self.root):
            raise PathRefused(
                f"{path}: refused, it resolves to {real}, outside the workspace {self.root}; "
                "only paths inside the workspace can be read or changed"
            )
        return real

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    def glob(self, pattern: str) -> list[Path]:
        """Paths matching `pattern` under the root, without descending into VCS, cache or dependency folders
        (a walk that prunes them, so a large node_modules costs nothing) or following links outside."""
        if not pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise PathRefused(f"{pattern!r}: a glob relative to the workspace is needed, without '..'")
        matches = _glob_regex(pattern).fullmatch
        found = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            base = Path(folder)
            for name in dirs + files:
                path = base / name
                inside = matches(path.relative_to(self.root).as_posix())
                if inside and Path(os.path.realpath(path)).is_relative_to(self.root):
                    found.append(path)
        return sorted(found)

    # -- tools ---------------------------------------------------------------------------------------

    def read(self, path: str, start_line: int | None = None, end_line: int | None = None) -> ToolResult:
        """The file's text exactly as edit scripts count it (no line numbers added), optionally a line range."""
        try:
            file = read_text_file(self.resolve(path))
        except (PathRefused, FileRefused) as exc:
            return _refusal(exc)
        text = file.text
        lines = text_lines(text)
        name = self.rel(file.path)
        if start_line is None and end_line is None and len(text) <= MAX_READ_CHARS:
            header = f"{name}: {len(lines)} lines, {len(text)} code points"
            return ToolResult(OK, f"{header}\n{text}", {"file": name})
        first = max(1, start_line or 1)
        if first > max(len(lines), 1):
            return ToolResult(ERROR, f"{name} has {len(lines)} lines; line {first} does not exist", {"file": name})
        stop = len(lines) if end_line is None else min(end_line, len(lines))
        last, shown = first, len(lines[first - 1]) if lines else 0  # always at least one line
        while last < stop and shown + len(lines[last]) <= MAX_READ_CHARS:
            shown += len(lines[last])
            last += 1
        offset = sum(len(line) for line in lines[: first - 1])
        header = (
            f"{name}: lines {first}-{last} of {len(lines)} ({len(text)} code points in all; "
            f"line {first} starts at code point {offset})"
        )
        if last < stop:
            header += f"\n(cut at {MAX_READ_CHARS} code points: read from line {last + 1} to see more)"
        return ToolResult(OK, f"{header}\n{''.join(lines[first - 1 : last])}", {"file": name})

    def edit(self, path: str, script: str, *, dry_run: bool = False) -> ToolResult:
        """Apply an edit script through the tolerant applier; its corrections and refusals go back verbatim."""
        try:
            target = self.resolve(path)
            result = apply_script_to_file(target, script, dry_run=dry_run)
        except (PathRefused, FileRefused) as exc:
            return _refusal(exc, {"file": path, "script": script})
        except OTError as exc:
            message = str(exc)
            if "unchanged" not in message:
                message += "\nThe file is unchanged."
            return ToolResult(ERROR, message, {"file": path, "script": script, "corrections": []})
        name = self.rel(result.path)
        messages = [c.message for c in result.edit.corrections] + result.edit.notes
        data = {
            "file": name,
            "script": script,
            "corrections": [c.to_dict() for c in result.edit.corrections],
            "notes": messages,
            "diff": result.diff,
            "written": result.written,
        }
        notes = "".join(f"note: {line}\n" for line in messages)
        if result.edit.after == result.edit.before:
            return ToolResult(OK, f"{notes}the script leaves {name} unchanged", data)
        verb = "would change" if dry_run else "applied to"
        return ToolResult(OK, f"{verb} {name}:\n{notes}{result.diff}", data, result.edit.after)

    def create(self, path: str, content: str, *, overwrite: bool = False, dry_run: bool = False) -> ToolResult:
        """Write a new file; an existing one is replaced only with `overwrite` (and journaled for undo).

        `dry_run` checks the same and returns the diff in `data["diff"]`, writing nothing."""
        try:
            target = self.resolve(path)
        except PathRefused as exc:
            return _refusal(exc)
        name = self.rel(target)
        if target.is_dir():
            return ToolResult(ERROR, f"{name} is a directory", {"file": name})
        if target.exists() and not overwrite:
            return ToolResult(
                ERROR,
                f"{name} already exists; change it with an edit script, or overwrite it to replace it whole",
                {"file": name},
            )
        if dry_run:
            before, notes = "", []
            if target.exists():
                try:
                    before = read_text_file(target).text
                except FileRefused as exc:
                    notes.append(f"the current content is not shown: {exc}")
            diff = unified_diff(before, content, name)
            return ToolResult(OK, f"would write {name}:\n{diff}", {"file": name, "diff": diff, "notes": notes}, content)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8")
        if target.exists():
            Journal().record(target, target.read_bytes(), data)
        atomic_write(target, data)
        return ToolResult(OK, f"wrote {name} ({len(content)} code points)", {"file": name}, content)

    def list(self, pattern: str = "**/*") -> ToolResult:
        """Paths matching a glob (relative to the root), directories with a trailing `/`, bounded."""
        try:
            paths = self.glob(pattern)
        except PathRefused as exc:
            return _refusal(exc)
        entries = [self.rel(path) + ("/" if path.is_dir() else "") for path in paths]
        if not entries:
            return ToolResult(OK, f"no paths match {pattern}", {"count": 0})
        shown = entries[:MAX_LIST_ENTRIES]
        more = f"\n(… {len(entries) - len(shown)} more; narrow the pattern)" if len(entries) > len(shown) else ""
        return ToolResult(OK, "\n".join(shown) + more, {"count": len(entries)})

    def search(self, regex: str, pattern: str = "**/*") -> ToolResult:
        """Lines matching a Python regex in the text files matching a glob: `path:line: text`, bounded."""
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            return ToolResult(ERROR, f"invalid regular expression {regex!r}: {exc}")
        try:
            paths = [path for path in self.glob(pattern) if path.is_file()]
        except PathRefused as exc:
            return _refusal(exc)
        hits, total = [], 0
        for path in paths:
            if path.stat().st_size > MAX_SEARCH_FILE_BYTES:
                continue
            try:
                text = read_text_file(path).text
            except FileRefused:
                continue
            for number, line in enumerate((row.removesuffix("\n") for row in text_lines(text)), 1):
                if compiled.search(line):
                    total += 1
                    if len(hits) < MAX_SEARCH_MATCHES:
                        cut = line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + " …"
                        hits.append(f"{self.rel(path)}:{number}: {cut}")
        if not hits:
            return ToolResult(OK, f"no matches for {regex!r} in {pattern}", {"matches": 0})
        more = f"\n(… {total - len(hits)} more matches; narrow the search)" if total > len(hits) else ""
        return ToolResult(OK, "\n".join(hits) + more, {"matches": total})

    def shell(self, command: str, timeout: float = 120) -> ToolResult:
        """Run `command` with bash in the workspace root; output (stdout+stderr) is cut to its head and tail."""
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout ends everything it started
        )
        try:
            raw, _ = process.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raw, _ = process.communicate()
            timed_out = True
        output = _truncate(raw.decode("utf-8", errors="replace"))
        data = {"exit_code": process.returncode, "timed_out": timed_out}
        if timed_out:
            return ToolResult(ERROR, f"timed out after {timeout:g} s and was killed; output so far:\n{output}", data)
        status = OK if process.returncode == 0 else ERROR
        return ToolResult(status, f"exit code {process.returncode}\n{output}", data)


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob as a regular expression: `*` and `?` stay within one path segment, `**/` spans any folders."""
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
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _refusal(exc: Exception, data: dict | None = None) -> ToolResult:
    status = REFUSED if isinstance(exc, PathRefused) else ERROR
    return ToolResult(status, str(exc), data or {})


def _truncate(text: str) -> str:
    if len(text) <= MAX_SHELL_OUTPUT:
        return text
    head, tail = MAX_SHELL_OUTPUT * 2 // 5, MAX_SHELL_OUTPUT * 3 // 5
    cut = len(text) - head - tail
    note = f"[… {cut} code points of output cut; showing the first {head} and the last {tail} …]"
    return f"{text[:head]}\n{note}\n{text[-tail:]}"
