"""Property tests (hypothesis, derandomized) for what a model can send: edit scripts through the applier and
through `agent apply`, and paths, globs and regexes through the workspace tools. The default run takes a
few seconds; the `slow` variants run many more examples of the same properties."""

import io
import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.edits import apply_script_to_file
from tools.journal import Journal
from tools.ot import OTError
from tools.text_files import FileRefused
from tools.workspace import ToolResult, Workspace
from tui.cli import main

FAST = settings(
    derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
MANY = settings(
    derandomize=True, max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

SOURCES = {
    "a.py": "def total(items):\n    return sum(items)\n\n\nclass A:\n    x = 1\n",
    "a.go": 'package main\n\nfunc main() {\n\tprintln("hi")\n}\n',
    "a.json": '{"a": [1, 2, {"b": null}]}\n',
    "a.txt": "alpha\nbeta \u00e9\u2028gamma \U0001f600\n",
    "a.js": "const f = (x) => {\n  return x * 2;\n};\n",
}

# -- scripts ----------------------------------------------------------------------------------------------

_odd_strings = st.sampled_from(
    ["\\ud83d", "\\ude00", "\\u0000", "\\n", "\\\\", '\\"', "\\u2028", "\\r\\n", "\t", "€", "😀", "\\x", "\\u12"]
)
_literal = st.lists(st.one_of(st.text(max_size=6), _odd_strings), max_size=4).map(
    lambda parts: '"' + "".join(p.replace('"', '\\"') if len(p) == 1 else p for p in parts) + '"'
)
_count = st.one_of(
    st.integers(0, 80).map(str),
    st.integers(0, 10**25).map(str),
    st.integers(19, 6000).map(lambda n: "9" * n),
    st.sampled_from(["-1", "1.5", "1e3", "0x10", ""]),
)
_op = st.one_of(
    st.builds(lambda name, arg: f"{name}({arg})", st.sampled_from(["retain", "delete"]), st.one_of(_count, _literal)),
    st.builds(lambda arg: f"insert({arg})", st.one_of(_literal, _count)),
    st.sampled_from(["# a comment", "[", "]", ",", "retain(", 'insert("', "frobnicate(1)", ")"]),
)
scripts = st.one_of(
    st.lists(_op, max_size=8).map("\n".join),
    st.text(alphabet='retaindelsr()[]"\\,#0123456789u\n ', max_size=60),
)


def _source(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _encodings(text: str) -> st.SearchStrategy[bytes]:
    return st.sampled_from([text.encode(), text.replace("\n", "\r\n").encode(), ("\ufeff" + text).encode()])


def check_applier(tmp: Path, name: str, data: bytes, script: str) -> None:
    """A script either applies, or is refused with an OTError/FileRefused leaving the file byte-identical."""
    path = _source(tmp, name, data)
    try:
        apply_script_to_file(path, script)
    except (OTError, FileRefused):
        assert path.read_bytes() == data


def check_cli(tmp: Path, capsys, monkeypatch, name: str, data: bytes, script: str) -> None:
    """`agent apply --json` prints one JSON object and exits 0, 2, 3 or 4; a refusal changes no byte, and an
    applied edit is undone to the same bytes and mode."""
    path = _source(tmp, name, data)
    os.chmod(path, 0o640)
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    code = main(["apply", "--json", str(path), "-"])
    report = json.loads(capsys.readouterr().out)
    assert code in (0, 2, 3, 4) and report["ok"] is (code == 0)
    if code != 0:
        assert path.read_bytes() == data and report["error"]
    elif path.read_bytes() != data:
        assert main(["undo", str(path)]) == 0
        capsys.readouterr()
        assert path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == 0o640


def _script_case():
    return st.sampled_from(sorted(SOURCES)).flatmap(
        lambda name: st.tuples(st.just(name), _encodings(SOURCES[name]), scripts)
    )


@FAST
@given(_script_case())
def test_fuzzed_scripts_through_the_applier_apply_or_are_refused_cleanly(tmp_path, case):
    check_applier(tmp_path, *case)


@pytest.mark.slow
@MANY
@given(_script_case())
def test_many_fuzzed_scripts_through_the_applier_apply_or_are_refused_cleanly(tmp_path, case):
    check_applier(tmp_path, *case)


@FAST
@given(_script_case())
def test_fuzzed_scripts_through_agent_apply_exit_0_2_3_or_4_with_json(tmp_path, capsys, monkeypatch, case):
    check_cli(tmp_path, capsys, monkeypatch, *case)


@pytest.mark.slow
@MANY
@given(_script_case())
def test_many_fuzzed_scripts_through_agent_apply_exit_0_2_3_or_4_with_json(tmp_path, capsys, monkeypatch, case):
    check_cli(tmp_path, capsys, monkeypatch, *case)


# -- exact scripts ----------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\ufeff"), max_size=40)


@st.composite
def exact_edits(draw) -> tuple[str, list[tuple[str, str]]]:
    """A document and an exact, quoted script over it: (kind, text) steps that walk it from the start."""
    doc = draw(_text)
    steps, at = [], 0
    while at < len(doc):
        size = draw(st.integers(1, len(doc) - at))
        kind = draw(st.sampled_from(["retain", "delete", "insert"]))
        if kind == "insert":
            steps.append(("insert", draw(_text.filter(bool))))
            continue
        steps.append((kind, doc[at : at + size]))
        at += size
    if draw(st.booleans()):
        steps.append(("insert", draw(_text.filter(bool))))
    return doc, steps


def reimplemented(doc: str, steps: list[tuple[str, str]]) -> str:
    """The result of an exact script, code point by code point, without the applier."""
    out, at = [], 0
    for kind, text in steps:
        if kind == "insert":
            out.append(text)
            continue
        assert doc[at : at + len(text)] == text
        if kind == "retain":
            out.append(text)
        at += len(text)
    return "".join(out) + doc[at:]


def check_exact(tmp: Path, doc: str, steps: list[tuple[str, str]]) -> None:
    path = _source(tmp, "doc.txt", doc.encode())
    script = "\n".join(f"{kind}({json.dumps(text)})" for kind, text in steps)
    apply_script_to_file(path, script)
    assert path.read_bytes().decode() == reimplemented(doc, steps)
    if doc != reimplemented(doc, steps):
        Journal().undo(path)
        assert path.read_bytes() == doc.encode()


@FAST
@given(exact_edits())
def test_an_exact_script_gives_what_a_code_point_reimplementation_gives(tmp_path, edit):
    check_exact(tmp_path, *edit)


@pytest.mark.slow
@MANY
@given(exact_edits())
def test_many_exact_scripts_give_what_a_code_point_reimplementation_gives(tmp_path, edit):
    check_exact(tmp_path, *edit)


# -- paths, globs and regexes -----------------------------------------------------------------------------

_path_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="./-_~*?[]!a\x00\ud83d\\", max_size=30),
    st.integers(250, 400).map(lambda n: "n" * n),
    st.sampled_from(["..", "/", "/etc/passwd", "../../x", "sub/../../x", "~", "sub/", "link", "pipe", ""]),
)
_regex_text = st.one_of(
    st.text(alphabet="()[]{}*+?|^$\\.a1-,:=!<>P", max_size=30),
    st.integers(100, 1200).map(lambda n: "(" * n + "a" + ")" * n),
    st.text(max_size=20),
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Workspace, Path]:
    """A workspace with a folder, a symlink to a file outside it and a FIFO, shared by the examples."""
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "ws"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.py").write_text("x = 1\n")
    (root / "b.txt").write_text("aaaa\n" * 3)
    (base / "outside.txt").write_text("outside\n")
    os.symlink(base / "outside.txt", root / "link")
    os.mkfifo(root / "pipe")
    return Workspace(root), base


def check_tools(workspace: tuple[Workspace, Path], path: str, glob: str, regex: str) -> None:
    """Every tool returns a result (never raises) and nothing outside the workspace changes."""
    ws, base = workspace
    ws.deadline = time.monotonic() + 1.0
    results = [
        ws.read(path),
        ws.read(path, 1, 1),
        ws.edit(path, 'retain(1)\ninsert("#")', dry_run=True),
        ws.create(path, "x\n"),
        ws.list(glob),
        ws.search(regex, glob),
    ]
    assert all(isinstance(result, ToolResult) and isinstance(result.output, str) for result in results)
    assert (base / "outside.txt").read_text() == "outside\n"
    assert sorted(p.name for p in base.iterdir()) == ["outside.txt", "ws"]


@FAST
@given(_path_text, _path_text, _regex_text)
def test_fuzzed_paths_globs_and_regexes_never_raise(workspace, path, glob, regex):
    check_tools(workspace, path, glob, regex)


@pytest.mark.slow
@MANY
@given(_path_text, _path_text, _regex_text)
def test_many_fuzzed_paths_globs_and_regexes_never_raise(workspace, path, glob, regex):
    check_tools(workspace, path, glob, regex)
