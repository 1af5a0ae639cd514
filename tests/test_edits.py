"""Edits on disk: encodings and line ends kept, atomic writes, refusals that change nothing, undo."""

import os
import stat

import pytest

from tools.edits import apply_script_to_file
from tools.journal import Journal, UndoRefused
from tools.ot import OTError
from tools.text_files import FileRefused, read_text_file


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_crlf_is_kept_and_scripts_count_lf(tmp_path):
    path = _write(tmp_path / "a.py", b"x = 1\r\ny = 2\r\n")
    apply_script_to_file(path, 'retain(6)\ndelete("y = 2")\ninsert("y = 3")')
    assert path.read_bytes() == b"x = 1\r\ny = 3\r\n"


def test_mixed_line_ends_are_left_as_they_are(tmp_path):
    path = _write(tmp_path / "a.txt", b"a\r\nb\nc\n")
    assert read_text_file(path).text == "a\r\nb\nc\n"
    apply_script_to_file(path, 'retain(5)\ndelete("c")\ninsert("d")')
    assert path.read_bytes() == b"a\r\nb\nd\n"


def test_bom_is_kept_and_not_counted(tmp_path):
    path = _write(tmp_path / "a.py", "\ufeffx = 1\n".encode())
    apply_script_to_file(path, 'retain(4)\ndelete("1")\ninsert("2")')
    assert path.read_bytes() == "\ufeffx = 2\n".encode()


def test_mode_is_kept(tmp_path):
    path = _write(tmp_path / "run.sh", b"#!/bin/sh\necho hi\n")
    os.chmod(path, 0o751)
    apply_script_to_file(path, 'retain(15)\ndelete("hi")\ninsert("there")')
    assert stat.S_IMODE(path.stat().st_mode) == 0o751
    assert path.read_bytes() == b"#!/bin/sh\necho there\n"


def test_no_temporary_files_are_left_behind(tmp_path):
    path = _write(tmp_path / "a.py", b"x = 1\n")
    apply_script_to_file(path, 'retain(4)\ndelete("1")\ninsert("2")')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.py", "state"]


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"\x00\x01binary", "binary file"), (b"caf\xe9\n", "not UTF-8")],
)
def test_binary_and_non_utf8_files_are_refused(tmp_path, data, message):
    path = _write(tmp_path / "f.dat", data)
    with pytest.raises(FileRefused, match=message):
        apply_script_to_file(path, "retain(1)")
    assert path.read_bytes() == data


def test_missing_file_and_directory_are_refused(tmp_path):
    with pytest.raises(FileRefused, match="no such file"):
        apply_script_to_file(tmp_path / "nope.py", "retain(1)")
    with pytest.raises(FileRefused, match="directory"):
        apply_script_to_file(tmp_path, "retain(1)")


@pytest.mark.parametrize(
    "script",
    ['retain(3)\ndelete("zzz")', "retain(2", 'retain(4)\ninsert("(((")', "retain(99)\ndelete(1)"],
)
def test_a_refused_edit_leaves_the_file_byte_identical(tmp_path, script):
    data = b"def f():\r\n    return 1\r\n"
    path = _write(tmp_path / "a.py", data)
    with pytest.raises(OTError):
        apply_script_to_file(path, script)
    assert path.read_bytes() == data
    assert Journal().entries() == []


def test_dry_run_writes_nothing_but_returns_the_diff(tmp_path):
    path = _write(tmp_path / "a.py", b"x = 1\n")
    result = apply_script_to_file(path, 'retain(4)\ndelete("1")\ninsert("2")', dry_run=True)
    assert path.read_bytes() == b"x = 1\n" and "-x = 1\n+x = 2\n" in result.diff


def test_undo_restores_edits_newest_first_per_file(tmp_path):
    first = _write(tmp_path / "a.py", b"x = 1\n")
    second = _write(tmp_path / "b.py", b"y = 1\n")
    apply_script_to_file(first, 'retain(4)\ndelete("1")\ninsert("2")')
    apply_script_to_file(first, 'retain(4)\ndelete("2")\ninsert("3")')
    apply_script_to_file(second, 'retain(4)\ndelete("1")\ninsert("9")')
    journal = Journal()
    journal.undo(first)
    assert first.read_bytes() == b"x = 2\n" and second.read_bytes() == b"y = 9\n"
    journal.undo()
    assert second.read_bytes() == b"y = 1\n"
    journal.undo()
    assert first.read_bytes() == b"x = 1\n"
    with pytest.raises(UndoRefused, match="nothing to undo"):
        journal.undo()


def test_undo_refuses_when_the_file_changed_since(tmp_path):
    path = _write(tmp_path / "a.py", b"x = 1\n")
    apply_script_to_file(path, 'retain(4)\ndelete("1")\ninsert("2")')
    path.write_bytes(b"x = 2  # edited by hand\n")
    with pytest.raises(UndoRefused, match="changed since"):
        Journal().undo(path)
    assert path.read_bytes() == b"x = 2  # edited by hand\n"
    Journal().undo(path, force=True)
    assert path.read_bytes() == b"x = 1\n"


def test_text_lines_split_at_newlines_only():
    from tools.text_files import text_lines

    assert text_lines("a\x0cb\nc\u2028d\n\ne") == ["a\x0cb\n", "c\u2028d\n", "\n", "e"]
    assert text_lines("a\n") == ["a\n"] and text_lines("") == []
    assert "".join(text_lines("x\r\ny\rz\n")) == "x\r\ny\rz\n" and len(text_lines("x\r\ny\rz\n")) == 2
