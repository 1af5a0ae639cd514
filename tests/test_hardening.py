"""Regressions from the adversarial review (issue #16): what a model, a user or another program can throw at
the tools, the applier, the journal and the model client, and what must hold when they do."""

import io
import json
import os
import shutil
import stat
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from replay import ReplayServer, Turn

import tools.edits as edits
import tools.patch as patch
from agent.client import Model, ModelUnavailable
from agent.config import Settings
from agent.headless import build_parser, run_command
from agent.loop import Agent, EditProposal, Hooks, RunState, first_messages
from agent.protocol import action_from_call
from agent.transcript import Redactor, Transcript, read_events
from tools.edits import apply_script_to_file, prepare_script, write_prepared
from tools.journal import Journal, UndoRefused
from tools.ot import Insert, Retain
from tools.ot_script import ScriptSyntaxError, parse_script
from tools.text_files import FileChanged, FileRefused
from tools.workspace import ERROR, OK, REFUSED, Workspace
from tui.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # litellm on newer pydantic

STATS = "def total(items):\n    return sum(items)\n\n\ndef mean(items):\n    return total(items) / len(items)\n"
FIX_MEAN = 'retain("return total(items) / ")\ndelete("len(items)")\ninsert("max(len(items), 1)")'


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "stats.py").write_text(STATS)
    (tmp_path / "task.md").write_text("Make mean() safe for empty lists.\n")
    return Workspace(root)


def apply_cli(monkeypatch, capsys, path, script, *flags):
    """`agent apply --json PATH -` with `script` on stdin: (exit code, the JSON report)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    code = main(["apply", "--json", *flags, str(path), "-"])
    out, _ = capsys.readouterr()
    return code, json.loads(out)


def run_agent(ws, capsys, turns, *flags):
    """`agent run` against replayed turns: (exit code, report, the requests the server got)."""
    report = ws.root.parent / "report.json"
    argv = [str(ws.root.parent / "task.md"), "--workspace", str(ws.root), "--json", str(report)]
    with ReplayServer(turns) as server:
        argv += ["--model", "openai/replay-model", "--api-base", server.url, *flags]
        code = run_command(build_parser().parse_args(argv))
    capsys.readouterr()
    return code, json.loads(report.read_text()), server.requests


def told(request: dict) -> str:
    return request["messages"][-1]["content"]


# -- 1. model output never crashes -------------------------------------------------------------------------


def test_half_a_surrogate_pair_in_an_insert_is_a_syntax_error_saying_what_to_write():
    with pytest.raises(ScriptSyntaxError, match=r"half of a UTF-16 surrogate pair \(\\ud83d\).*both halves"):
        parse_script('retain(5)\ninsert("\\ud83d")')
    assert parse_script('insert("\\ud83d\\ude00")') == [Insert("😀")]  # a whole pair is one character


def test_a_count_too_long_to_be_a_position_is_refused_before_python_parses_it():
    with pytest.raises(ScriptSyntaxError, match="count too large"):
        parse_script("retain(" + "9" * 5000 + ")")
    assert parse_script("retain(" + "9" * 18 + ")") == [Retain(10**18 - 1)]


@pytest.mark.parametrize(
    "script", ['retain(5)\ninsert("\\ud800")', "retain(" + "9" * 5000 + ")", 'retain(3)\ninsert("\\u0000")']
)
def test_agent_apply_refuses_odd_scripts_with_json_and_exit_3(monkeypatch, capsys, tmp_path, script):
    path = tmp_path / "s.py"
    path.write_text("x = 1\n")
    code, report = apply_cli(monkeypatch, capsys, path, script)
    assert code == 3 and report["ok"] is False and report["error"]
    assert path.read_bytes() == b"x = 1\n"


@pytest.mark.parametrize(
    "call",
    [
        ("read", {"path": "a\x00b.py"}),
        ("read", {"path": "n" * 300 + ".py"}),
        ("edit", {"path": "n" * 300 + ".py", "script": "retain(1)"}),
        ("create", {"path": "d\ud83d.py", "content": "x"}),
        ("list", {"pattern": "[z-a]"}),
        ("search", {"regex": "(" * 1000 + "a" + ")" * 1000}),
        ("search", {"regex": "x", "glob": "\x00"}),
    ],
)
def test_odd_arguments_from_the_model_become_messages_not_crashes(ws, capsys, call):
    name, args = call
    turns = [Turn(tool_calls=[(name, args)]), Turn(tool_calls=[("done", {"summary": "ok"})])]
    code, report, requests = run_agent(ws, capsys, turns, "--tools", "native")
    assert report["tool_calls"][0]["status"] in (ERROR, REFUSED, OK)
    assert requests[1]["messages"][-1]["role"] == "tool" and requests[1]["messages"][-1]["content"]
    assert code in (0, 1)


def test_huge_numbers_in_tool_calls_are_told_to_the_model(ws, capsys):
    huge = "1234567890" * 500  # varied digits: litellm stops a stream that repeats one chunk
    code, _, requests = run_agent(ws, capsys, [Turn(f"```read stats.py 1-{huge}```"), Turn("```done\nok\n```")])
    assert "line numbers that large" in told(requests[1]) and code == 0
    action = action_from_call("c1", "read", f'{{"path": "stats.py", "start_line": {huge}}}')
    assert action.tool == "invalid" and "not valid JSON" in action.args["error"]


def test_an_unexpected_tool_exception_reaches_the_model_with_its_class_and_text(ws, capsys, monkeypatch):
    def broken(self, pattern="**/*"):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Workspace, "list", broken, raising=True)
    monkeypatch.setattr("agent.headless.first_messages", lambda task, *_: [{"role": "user", "content": task}])
    turns = [Turn("```list *.py```"), Turn("```done\nok\n```")]
    code, report, requests = run_agent(ws, capsys, turns)
    assert "RuntimeError: disk on fire" in told(requests[1]) and report["tool_calls"][0]["status"] == ERROR
    assert code == 0


def test_a_failure_of_the_agent_itself_still_writes_the_end_event_and_the_report(ws, capsys, monkeypatch):
    def broken(self, state, reply):
        raise RuntimeError("loop bug")

    monkeypatch.setattr(Agent, "_act", broken)
    code, report, _ = run_agent(ws, capsys, [Turn("```done\nok\n```")])
    assert code == 1 and report["status"] == "failed" and "RuntimeError: loop bug" in report["reason"]
    events = read_events(Path(report["transcript"]))
    assert events[-1]["type"] == "end" and events[-1]["status"] == "failed"


def test_workspace_tools_refuse_unusable_paths_and_globs_without_raising(ws):
    assert ws.read("a\x00b").status == REFUSED and "NUL" in ws.read("a\x00b").output
    assert ws.read("n" * 300).status == ERROR and "shorter name" in ws.read("n" * 300).output
    assert ws.create("n" * 300, "x").status == ERROR
    assert ws.create("d\ud83d", "x").status == REFUSED
    assert ws.list("[z-a]").status == OK  # not a valid class: the `[` is literal
    (ws.root / "[z-a]").write_text("")
    assert ws.list("[z-a]").output == "[z-a]"
    deep = ws.search("(" * 1000 + "a" + ")" * 1000)
    assert deep.status == ERROR and "nests too deeply" in deep.output


def test_permission_errors_are_refusals_that_say_what_to_check(tmp_path, monkeypatch, capsys):
    """Running as root, permissions are simulated: os.open refuses the file as an unreadable one would be."""
    path = tmp_path / "locked.py"
    path.write_text("x = 1\n")
    real_open = os.open

    def deny(target, flags, *args, **kwargs):
        if str(target).endswith("locked.py"):
            raise PermissionError(13, "Permission denied", str(target))
        return real_open(target, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(FileRefused, match="permission denied; check its permissions"):
        apply_script_to_file(path, "retain(1)")
    code, report = apply_cli(monkeypatch, capsys, path, 'retain(4)\ndelete("1")\ninsert("2")')
    assert code == 2 and "permission denied" in report["error"]


def test_a_read_only_folder_and_an_unwritable_state_dir_exit_2_with_json(tmp_path, monkeypatch, capsys):
    path = tmp_path / "a.py"
    path.write_text("x = 1\n")
    real_open = os.open

    def read_only_folder(target, flags, *args, **kwargs):
        if str(target).startswith(".retain-"):
            raise PermissionError(13, "Permission denied", str(target))
        return real_open(target, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_folder)
    code, report = apply_cli(monkeypatch, capsys, path, 'retain(4)\ndelete("1")\ninsert("2")')
    assert code == 2 and "permission denied" in report["error"] and path.read_text() == "x = 1\n"
    monkeypatch.setattr(os, "open", real_open)
    (tmp_path / "state-file").write_text("")
    monkeypatch.setenv("RETAIN_STATE_DIR", str(tmp_path / "state-file"))  # a file: no journal can live there
    code, report = apply_cli(monkeypatch, capsys, path, 'retain(4)\ndelete("1")\ninsert("2")')
    assert code == 2 and "undo" in report["error"] and path.read_text() == "x = 1\n"


# -- 2. an approved edit is the edit written -----------------------------------------------------------------


def test_a_prepared_edit_is_refused_when_the_file_changed_before_the_write(tmp_path):
    path = tmp_path / "a.py"
    path.write_text("def f():\n    return 1\n")
    prepared = prepare_script(path, 'retain("def f():\\n    return ")\ndelete("1")\ninsert("2")')
    path.write_text("def f():\n    return 11\n")  # another program edits the file meanwhile
    with pytest.raises(FileChanged, match=r"changed after the edit was computed.*nothing was written"):
        write_prepared(prepared)
    assert path.read_text() == "def f():\n    return 11\n" and Journal().entries() == []


def test_the_approver_sees_the_edit_that_is_written_and_a_change_meanwhile_is_kept(ws):
    """The issue's case: approving `-return 1/+return 2` once wrote `-return 11/+return 21`."""
    (ws.root / "f.py").write_text("def f():\n    return 1\n")
    script = 'retain(20)\ndelete(1)\ninsert("2")'

    def approve_after_a_change(proposal: EditProposal) -> bool:
        (ws.root / "f.py").write_text("def f():\n    return 11\n")
        return "-    return 1\n+    return 2\n" in proposal.diff

    with ReplayServer([Turn(f"```edit f.py\n{script}\n```"), Turn("```failed\nchanged\n```")]) as server:
        agent = Agent(
            Model("openai/replay-model", server.url),
            ws,
            Transcript(ws.root.parent / "t.jsonl", Redactor({})),
            Settings(max_steps=3),
            Hooks(approve_edit=approve_after_a_change),
        )
        agent.run(RunState("r1", "task", first_messages("task", ws)))
    assert (ws.root / "f.py").read_text() == "def f():\n    return 11\n"
    assert "changed after the edit was computed" in told(server.requests[1])


def test_agent_apply_exits_3_when_the_file_changes_while_the_edit_is_computed(tmp_path, monkeypatch, capsys):
    path = tmp_path / "big.txt"
    path.write_text("line\n" * 1000)
    real_apply = edits.apply_edit

    def apply_then_append(*args, **kwargs):
        result = real_apply(*args, **kwargs)
        with open(path, "a") as handle:
            handle.write("appended by an editor\n")
        return result

    monkeypatch.setattr(edits, "apply_edit", apply_then_append)
    code, report = apply_cli(monkeypatch, capsys, path, 'delete("line")\ninsert("LINE")')
    assert code == 3 and "changed after the edit was computed" in report["error"]
    assert path.read_text() == "line\n" * 1000 + "appended by an editor\n"


# -- 3. writes never land outside the workspace ------------------------------------------------------------


def test_a_folder_swapped_for_a_symlink_after_the_check_does_not_carry_the_write_outside(ws, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.root / "sub").mkdir()
    (ws.root / "sub" / "f.txt").write_text("inside\n")
    (outside / "f.txt").write_text("inside\n")
    real_prepare = edits.prepare_content

    def prepare_then_swap(*args, **kwargs):
        prepared = real_prepare(*args, **kwargs)
        os.rename(ws.root / "sub", ws.root / "sub-moved")
        os.symlink(outside, ws.root / "sub")
        return prepared

    monkeypatch.setattr("tools.workspace.prepare_content", prepare_then_swap)
    result = ws.create("sub/f.txt", "written\n", overwrite=True)
    assert result.status == ERROR and "symlink" in result.output
    assert (outside / "f.txt").read_text() == "inside\n"


def _race(ws: Workspace, outside: Path, seconds: float) -> tuple[int, list[str]]:
    """Swap the folder `sub` for a symlink to `outside` and back, over and over, while creating and editing
    files in it; returns how many files outside were written, and the exceptions the tools raised."""
    sub, parked = ws.root / "sub", ws.root / "parked"
    sub.mkdir()
    (sub / "e.txt").write_text("x\n")
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            try:
                os.rename(sub, parked)
                os.symlink(outside, sub)
                os.unlink(sub)
                os.rename(parked, sub)
            except OSError:  # a create made a new `sub` in the gap
                _put_back(parked, sub)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    calls = (lambda: ws.create("sub/c.txt", "created\n", overwrite=True), lambda: ws.edit("sub/e.txt", 'insert("y")'))
    ends, raised = time.monotonic() + seconds, []
    try:
        while time.monotonic() < ends:
            for call in calls:
                try:
                    call()
                except Exception as exc:  # counted: the tools must not raise
                    raised.append(repr(exc))
    finally:
        stop.set()
        flipper.join()
    return sum(1 for path in outside.iterdir() if path.name != "e.txt" or path.read_text() != "x\n"), raised


def _put_back(parked: Path, sub: Path) -> None:
    """Move the real folder back to `sub`, dropping whatever stands there now."""
    while parked.exists():
        try:
            if sub.is_symlink():
                os.unlink(sub)
            elif sub.is_dir():
                shutil.rmtree(sub, ignore_errors=True)
            os.rename(parked, sub)
        except OSError:
            continue


def test_a_path_flipped_to_a_symlink_outside_never_receives_a_write(ws, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "e.txt").write_text("x\n")
    assert _race(ws, outside, 2.0) == (0, [])


@pytest.mark.slow
def test_a_path_flipped_to_a_symlink_outside_for_20_s_never_receives_a_write(ws, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "e.txt").write_text("x\n")
    assert _race(ws, outside, 20.0) == (0, [])


# -- 4. bounded tools ----------------------------------------------------------------------------------------


def test_reading_one_line_of_a_large_file_streams_it(ws):
    with open(ws.root / "big.txt", "w") as handle:
        for _ in range(64):
            handle.write("0123456789" * 5 + "\n" + "x" * (1 << 18) + "\n")
    tracemalloc.start()
    try:
        result = ws.read("big.txt", 1, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.status == OK and result.output.endswith("\n" + "0123456789" * 5 + "\n")
    assert "lines 1-1 of 128" in result.output
    assert peak < 8 << 20  # the file is 16 MiB


def test_a_line_range_of_a_crlf_file_counts_like_the_edit_scripts(ws):
    (ws.root / "w.txt").write_bytes(b"\xef\xbb\xbfab\r\ncd\r\nef\r\n")
    result = ws.read("w.txt", 2, 3)
    assert result.output == "w.txt: lines 2-3 of 3 (9 code points in all; line 2 starts at code point 3)\ncd\nef\n"


def test_a_fifo_is_refused_at_once_instead_of_hanging(ws):
    os.mkfifo(ws.root / "pipe")
    results = []
    reader = threading.Thread(target=lambda: results.append(ws.read("pipe")), daemon=True)
    reader.start()
    reader.join(5)
    assert results and results[0].status == ERROR and "not a regular file" in results[0].output


def test_a_backtracking_search_stops_at_its_time_budget(ws, monkeypatch):
    monkeypatch.setattr("tools.workspace.SEARCH_TIME_BUDGET", 0.3)
    (ws.root / "a.txt").write_text("a" * 40 + "b\n")
    result = ws.search("(a|aa)+$")
    assert result.status == ERROR and "stopped after 0.3 s" in result.output and result.data["timed_out"]


def test_the_runs_deadline_bounds_a_search(ws):
    (ws.root / "a.txt").write_text("a" * 40 + "b\n")
    ws.deadline = time.monotonic() + 0.2
    assert ws.search("(a|aa)+$").data["timed_out"]


def test_shell_output_is_capped_while_it_streams(ws):
    tracemalloc.start()
    try:
        result = ws.shell("head -c 40000000 /dev/zero | tr '\\0' 'a'; echo; echo END")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.status == OK and "40000005 bytes in all" in result.output and result.output.endswith("END\n")
    assert peak < 8 << 20


def test_a_command_flooding_its_output_is_killed(ws, monkeypatch):
    monkeypatch.setattr("tools.workspace.MAX_SHELL_STREAM_BYTES", 1 << 20)
    result = ws.shell("yes", timeout=60)  # killed for its output long before its timeout
    assert result.status == ERROR and "killed: it wrote more than 1 MiB" in result.output


def test_an_ambiguous_script_on_a_large_file_is_refused_within_the_time_budget(monkeypatch):
    monkeypatch.setattr(patch, "TIME_BUDGET", 1.0)
    block = "def f{i}(x):\n    if x:\n        return {i}\n    return 0\n\n\n"
    doc = "".join(block.format(i=i) for i in range(40000))[:2_000_000]
    with pytest.raises(patch.EditRefused, match="in time"):
        patch.apply_edit(doc, [Retain(1001), Insert("    y = 1\n")] * 18, ".py")


def test_agent_run_timeout_becomes_the_tools_deadline(ws, capsys, monkeypatch):
    (ws.root / "a.txt").write_text("a" * 40 + "b\n")
    run_agent(ws, capsys, [Turn("```done\nok\n```")])  # the model client's imports, outside the budget below
    turns = [Turn("```search (a|aa)+$```"), Turn("```done\nok\n```")]
    code, report, _ = run_agent(ws, capsys, turns, "--timeout", "3")
    assert report["tool_calls"][0]["status"] == ERROR, report["tool_calls"]
    assert code in (0, 3)


# -- 5. secrets ----------------------------------------------------------------------------------------------


def test_the_prediction_and_the_task_are_redacted_like_tool_output(ws, capsys, monkeypatch):
    monkeypatch.setenv("RETAIN_TEST_API_KEY", "sk-live-0123456789")
    (ws.root / "conf.py").write_text('API_KEY = "sk-live-0123456789"\n')
    (ws.root.parent / "task.md").write_text("Rotate the key sk-live-0123456789 in conf.py.\n")
    edit = '```edit conf.py\nretain(11)\ninsert("x")\n```'
    turns = [Turn("```read conf.py```"), Turn(edit), Turn("```done\nok\n```")]
    _, _, requests = run_agent(ws, capsys, turns)
    assert requests[1]["prediction"]["content"] == 'API_KEY = "[redacted $RETAIN_TEST_API_KEY]"\n'
    assert all("sk-live" not in json.dumps(request) for request in requests)


# -- 7. journal and files ------------------------------------------------------------------------------------


def test_a_failed_write_leaves_no_journal_entry(tmp_path, monkeypatch):
    path = tmp_path / "a.py"
    path.write_text("x = 1\n")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(FileRefused, match="free some disk space"):
        apply_script_to_file(path, 'retain(4)\ndelete("1")\ninsert("2")')
    assert Journal().entries() == [] and path.read_text() == "x = 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.py", "state"]  # no temporary file left


def test_a_torn_journal_line_is_skipped_with_a_note_and_later_undos_work(tmp_path):
    path = tmp_path / "a.py"
    path.write_text("x = 1\n")
    apply_script_to_file(path, 'retain(4)\ndelete("1")\ninsert("2")')
    with open(Journal().log, "a") as handle:
        handle.write('{"id": "torn", "pa')  # a crash in the middle of a line
    apply_script_to_file(path, 'retain(4)\ndelete("2")\ninsert("3")')
    journal = Journal()
    journal.undo(path)
    journal.undo(path)
    assert path.read_text() == "x = 1\n"
    assert any("skipped a damaged journal line" in note for note in journal.notes)


def test_agent_undo_says_when_it_skipped_a_torn_journal_line(tmp_path, capsys):
    path = tmp_path / "a.py"
    path.write_text("x = 1\n")
    apply_script_to_file(path, 'retain(4)\ndelete("1")\ninsert("2")')
    with open(Journal().log, "a") as handle:
        handle.write('{"id": "torn"\n')
    assert main(["undo", str(path)]) == 0 and path.read_text() == "x = 1\n"
    assert "note: " in capsys.readouterr().err


def test_undo_force_of_a_deleted_file_restores_its_mode(tmp_path):
    path = tmp_path / "run.sh"
    path.write_text("echo hi\n")
    os.chmod(path, 0o755)
    apply_script_to_file(path, 'retain(5)\ndelete("hi")\ninsert("yo")')
    path.unlink()
    with pytest.raises(UndoRefused, match="was deleted since"):
        Journal().undo(path)
    Journal().undo(path, force=True)
    assert path.read_text() == "echo hi\n" and stat.S_IMODE(path.stat().st_mode) == 0o755


def test_a_read_only_file_is_refused_saying_how_to_make_it_editable(tmp_path, monkeypatch, capsys):
    path = tmp_path / "ro.py"
    path.write_text("x = 1\n")
    os.chmod(path, 0o444)
    code, report = apply_cli(monkeypatch, capsys, path, 'retain(4)\ndelete("1")\ninsert("2")')
    assert code == 2 and "read-only" in report["error"] and f"chmod u+w {path}" in report["error"]
    assert path.read_text() == "x = 1\n"


def test_a_file_with_other_hard_links_is_edited_in_place(tmp_path):
    path = tmp_path / "a.py"
    path.write_text("x = 1\n")
    os.link(path, tmp_path / "b.py")
    inode = path.stat().st_ino
    apply_script_to_file(path, 'retain(4)\ndelete("1")\ninsert("2")')
    assert (tmp_path / "b.py").read_text() == "x = 2\n" and path.stat().st_ino == inode
    Journal().undo(path)
    assert (tmp_path / "b.py").read_text() == "x = 1\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_file_owned_by_another_user_keeps_its_owner(tmp_path):
    path = tmp_path / "theirs.py"
    path.write_text("x = 1\n")
    os.chown(path, 12345, 12345)
    apply_script_to_file(path, 'retain(4)\ndelete("1")\ninsert("2")')
    assert path.read_text() == "x = 2\n" and (path.stat().st_uid, path.stat().st_gid) == (12345, 12345)


def test_inserting_nul_into_a_text_file_is_refused(ws):
    result = ws.edit("stats.py", 'insert("\\u0000")')
    assert result.status == ERROR and "NUL" in result.output and (ws.root / "stats.py").read_text() == STATS
    assert ws.create("new.py", "a\x00b").status == ERROR


# -- 8. odd server streams -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("turn", "expected"),
    [
        (Turn(raw='{"choices": [{"message": {"content": "hi"}}]}', raw_type="application/json"), "application/json"),
        (Turn(raw="data: this is not json\n\ndata: [DONE]\n\n"), "data: this is not json"),
        (Turn(raw="garbage without events"), "garbage without events"),
    ],
)
def test_a_server_that_does_not_stream_events_is_misbehaving_and_quoted(turn, expected):
    with ReplayServer([turn]) as server, pytest.raises(ModelUnavailable, match="misbehaved") as refusal:
        Model("openai/replay-model", server.url).complete([{"role": "user", "content": "hi"}])
    assert expected in str(refusal.value)


def test_agent_run_exits_4_on_a_json_answer_to_a_stream_request(ws, capsys):
    turn = Turn(raw='{"choices": []}', raw_type="application/json")
    code, report, requests = run_agent(ws, capsys, [turn] * 3)
    assert code == 4 and report["status"] == "unavailable" and "misbehaved" in report["reason"]
    assert len(requests) == 1
