"""The workspace tools: paths stay inside, results are what a model can act on, nothing is lost."""

import os

import pytest

from tools.ot import OTError
from tools.ot_script import parse_script
from tools.workspace import ERROR, MAX_SHELL_OUTPUT, OK, REFUSED, PathRefused, Workspace


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "stats.py").write_text("def total(items):\n    return sum(items)\n")
    (root / "notes.txt").write_text("alpha\nbeta\ngamma\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    (tmp_path / "secret.txt").write_text("outside the workspace\n")
    return Workspace(root)


@pytest.mark.parametrize("path", ["../secret.txt", "src/../../secret.txt", "/etc/passwd"])
def test_paths_outside_the_workspace_are_refused(ws, path):
    with pytest.raises(PathRefused, match="outside the workspace"):
        ws.resolve(path)
    result = ws.read(path)
    assert result.status == REFUSED and "outside the workspace" in result.output


def test_a_symlink_leading_outside_is_refused_for_every_tool(ws, tmp_path):
    os.symlink(tmp_path / "secret.txt", ws.root / "link.txt")
    os.symlink(tmp_path, ws.root / "up")
    assert ws.read("link.txt").status == REFUSED
    assert ws.edit("link.txt", 'insert("x")').status == REFUSED
    assert ws.create("up/new.txt", "x").status == REFUSED
    assert not (tmp_path / "new.txt").exists()
    assert (tmp_path / "secret.txt").read_text() == "outside the workspace\n"
    assert "secret" not in ws.search("outside").output
    assert "link.txt" not in ws.list("*").output


def test_read_returns_the_exact_text_and_a_line_range_says_where_it_starts(ws):
    whole = ws.read("notes.txt")
    assert whole.status == OK and whole.output == "notes.txt: 3 lines, 17 code points\nalpha\nbeta\ngamma\n"
    part = ws.read("notes.txt", 2, 3)
    assert "lines 2-3 of 3" in part.output and "line 2 starts at code point 6" in part.output
    assert part.output.endswith("\nbeta\ngamma\n")
    assert ws.read("notes.txt", 9).status == ERROR
    assert "no such file" in ws.read("missing.py").output


def test_edit_applies_through_the_applier_and_reports_corrections(ws):
    result = ws.edit("src/stats.py", 'retain(5)\ndelete("total")\ninsert("grand_total")')
    assert result.status == OK
    assert "moved from" in result.output and "+def grand_total(items):" in result.output
    assert result.data["corrections"][0]["kind"] == "anchor"
    assert result.file_text == (ws.root / "src/stats.py").read_text()
    assert result.file_text.startswith("def grand_total(items):")


def test_a_refused_edit_returns_the_applier_message_verbatim_and_leaves_the_file(ws):
    before = (ws.root / "src/stats.py").read_bytes()
    script = 'retain("return ")\ndelete("sum(items)")\ninsert("sum(items")'
    result = ws.edit("src/stats.py", script)
    assert result.status == ERROR and "syntax error" in result.output and "unchanged" in result.output
    assert (ws.root / "src/stats.py").read_bytes() == before
    bad = 'retain(3\ninsert("x")'
    with pytest.raises(OTError) as expected:
        parse_script(bad)
    result = ws.edit("src/stats.py", bad)
    assert result.output.startswith(str(expected.value)) and result.output.endswith("The file is unchanged.")
    assert (ws.root / "src/stats.py").read_bytes() == before


def test_dry_run_edit_writes_nothing(ws):
    result = ws.edit("notes.txt", 'delete("alpha")', dry_run=True)
    assert result.status == OK and result.output.startswith("would change notes.txt")
    assert (ws.root / "notes.txt").read_text() == "alpha\nbeta\ngamma\n"


def test_create_refuses_to_overwrite_unless_asked(ws):
    assert ws.create("pkg/new.py", "x = 1\n").status == OK
    assert (ws.root / "pkg/new.py").read_text() == "x = 1\n"
    refused = ws.create("notes.txt", "replaced\n")
    assert refused.status == ERROR and "already exists" in refused.output
    assert (ws.root / "notes.txt").read_text() == "alpha\nbeta\ngamma\n"
    assert ws.create("notes.txt", "replaced\n", overwrite=True).status == OK
    assert (ws.root / "notes.txt").read_text() == "replaced\n"


def test_list_globs_inside_and_skips_vcs_and_dependency_folders(ws):
    (ws.root / "node_modules" / "left-pad").mkdir(parents=True)
    (ws.root / "node_modules" / "left-pad" / "index.js").write_text("module.exports = 1\n")
    (ws.root / "src" / "deep").mkdir()
    (ws.root / "src" / "deep" / "more.py").write_text("x = 1\n")
    listing = ws.list("**/*")
    assert listing.output.splitlines() == ["notes.txt", "src/", "src/deep/", "src/deep/more.py", "src/stats.py"]
    assert ws.list("src/*.py").output == "src/stats.py"  # one star stays in its folder
    assert ws.list("**/*.py").output.splitlines() == ["src/deep/more.py", "src/stats.py"]
    assert ws.list("[n]otes.tx?").output == "notes.txt"
    assert ws.list("../*").status == REFUSED
    assert ws.list("*.rs").output == "no paths match *.rs"


def test_search_finds_lines_by_regex_and_reports_bad_patterns(ws):
    result = ws.search(r"def \w+\(", "**/*.py")
    assert result.output == "src/stats.py:1: def total(items):"
    assert ws.search("(unclosed").status == ERROR
    (ws.root / "big.txt").write_text("hit\n" * 150)
    many = ws.search("hit", "big.txt")
    assert many.data["matches"] == 150 and "50 more matches" in many.output


def test_shell_runs_in_the_workspace_and_reports_the_exit_code(ws):
    result = ws.shell("pwd; ls; exit 3")
    assert result.status == ERROR and result.data["exit_code"] == 3
    assert result.output.startswith("exit code 3\n") and str(ws.root) in result.output and "notes.txt" in result.output


def test_shell_output_is_cut_with_a_note(ws):
    result = ws.shell(f"python3 -c \"print('a' * {MAX_SHELL_OUTPUT * 3})\"; echo END")
    assert result.status == OK and "code points of output cut" in result.output
    assert result.output.rstrip().endswith("END") and len(result.output) < MAX_SHELL_OUTPUT + 200


def test_shell_timeout_kills_the_command_and_its_children(ws):
    result = ws.shell("echo started; sleep 30 & sleep 30", timeout=0.5)
    assert result.status == ERROR and result.data["timed_out"] and "timed out after 0.5 s" in result.output
    assert "started" in result.output
