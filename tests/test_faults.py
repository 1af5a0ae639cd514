"""Faults a tool meets over weeks of use: odd trees, repeating models, killed processes, dropped servers."""

import json
import os
import sys
from pathlib import Path

import pytest
from replay import ReplayServer, Turn

from agent.client import REPEAT_LIMIT
from agent.headless import build_parser, run_command
from tools.exit_codes import ExitCode
from tools.workspace import OK, Workspace

DEPTH = 2048  # the chain the agent's own `create` makes from a 4,096-character path


@pytest.fixture
def deep(tmp_path):
    """A workspace with a file near the top and a folder chain DEPTH levels deep, made by descriptor (its
    deepest paths are longer than the system lets any call name)."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "top.py").write_text("needle = 1\n")
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(DEPTH):
            os.mkdir("d", dir_fd=folder)
            if level == 3:
                with open(os.open("near.py", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=folder), "w") as file:
                    file.write("needle = 2\n")
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder)
            os.close(folder)
            folder = inner
    finally:
        os.close(folder)
    yield Workspace(root)
    _remove_chain(root)


def _remove_chain(root):
    """Remove the chain with short paths only: lift each level's child up a level, then drop the emptied folder."""
    while (root / "d").exists():
        for entry in os.scandir(root / "d"):
            if not entry.is_dir():
                os.unlink(entry.path)
        if (root / "d" / "d").exists():
            os.rename(root / "d" / "d", root / "lifted")
        os.rmdir(root / "d")
        if (root / "lifted").exists():
            os.rename(root / "lifted", root / "d")


def test_list_and_search_work_in_a_tree_thousands_of_folders_deep(deep):
    listed = deep.list("**/*.py")
    assert listed.status == OK and listed.output.splitlines()[:2] == ["d/d/d/near.py", "top.py"]
    assert "could not be read" in listed.output  # the folders too deep to name are said, not hidden
    found = deep.search("needle")
    assert found.status == OK and found.data["matches"] == 2
    assert deep.list("d").output.splitlines()[0] == "d/"


def test_a_walk_stops_at_its_time_budget_and_says_so(deep, monkeypatch):
    monkeypatch.setattr("tools.workspace.LIST_TIME_BUDGET", -1.0)  # already spent when the walk starts
    listed = deep.list("**/*")
    assert listed.status == OK and listed.data["timed_out"] and "time budget" in listed.output
    searched = deep.search("needle")
    assert searched.status == OK and "time budget" in searched.output


def test_a_model_repeating_one_chunk_is_cut_and_the_run_ends_on_its_budgets_not_as_a_server_error(tmp_path, capsys):
    """litellm raises when a stream repeats a chunk 100 times; that is the model's output, not a server fault."""
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "task.md").write_text("Underline the title.\n")
    report = tmp_path / "report.json"
    stuck = Turn("=======" * 3000)  # 3,000 identical chunks (the replay streams 7 characters at a time)
    with ReplayServer([stuck, stuck, stuck]) as server:
        argv = [str(tmp_path / "task.md"), "--workspace", str(root), "--json", str(report),
                "--model", "openai/replay-model", "--api-base", server.url, "--turn-tokens", "100000"]
        code = run_command(build_parser().parse_args(argv))
    _, err = capsys.readouterr()
    result = json.loads(report.read_text())
    assert code == ExitCode.FAILED and result["status"] == "failed" and "repeating itself" in result["reason"]
    assert f"repeated '=======' {REPEAT_LIMIT} times" in err
    told = server.requests[1]["messages"][-1]["content"]
    assert told.startswith(f"Your reply repeated '=======' {REPEAT_LIMIT} times in a row")
    assert server.dropped >= 1  # the stream was closed when cut, so the server stops writing


# -- a process killed at each step of an edit --------------------------------------------------------------------

KILLER = r'''
import os, signal, sys
from pathlib import Path
import tools.edits as edits
import tools.journal as journal
import tools.text_files as text_files

target, step, script = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
new = sys.argv[4].encode()

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(module, name, when):
    real = getattr(module, name)
    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        if when(*args, **kwargs):
            die()
        return result
    setattr(module, name, wrapped)

def before(module, name, when):
    real = getattr(module, name)
    def wrapped(*args, **kwargs):
        if when(*args, **kwargs):
            die()
        return real(*args, **kwargs)
    setattr(module, name, wrapped)

ours = lambda *args, **kwargs: args[1] == target.name  # os.replace(tmp, name, ...) of the edited file
if step == "journaled":
    after(journal.Journal, "note", lambda *args, **kwargs: True)
elif step == "temp written":
    after(text_files, "_write_all", lambda fd, data: bytes(data) == new)
elif step == "fsynced":
    before(os, "replace", ours)
elif step == "renamed":
    after(os, "replace", ours)
edits.apply_script_to_file(target, script)
die()  # "written": every step done, killed before the process could exit on its own
'''
STEPS = ("journaled", "temp written", "fsynced", "renamed", "written")


@pytest.mark.parametrize("step", STEPS)
def test_a_process_killed_at_any_step_of_an_edit_leaves_the_file_old_or_new_and_undo_right(tmp_path, step):
    import subprocess
    import sys

    from tools.journal import Journal, UndoRefused

    folder = tmp_path / "ws"
    folder.mkdir()
    target = folder / "notes.txt"
    old, new = "this is really beautiful\n", "this is very very beautiful\n"
    target.write_text(old)
    target.chmod(0o640)
    state = tmp_path / "state"
    script = 'retain(8)\ndelete("really")\ninsert("very very")'
    env = {**os.environ, "RETAIN_STATE_DIR": str(state)}
    killed = subprocess.run([sys.executable, "-c", KILLER, str(target), step, script, new], env=env, check=False)
    assert killed.returncode == -9  # it died at the step, not of an error
    assert target.read_text() in (old, new)  # never torn
    assert target.stat().st_mode & 0o777 == 0o640
    landed = target.read_text() == new
    journal = Journal(state)
    if landed:
        journal.undo(target)
        assert target.read_text() == old  # an edit on disk is always undoable
    else:
        with pytest.raises(UndoRefused, match="nothing to undo"):
            journal.undo(target)
        assert target.read_text() == old
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]  # no temporary file left beside it
    assert landed == (step in ("renamed", "written"))


# -- runs that survive their server ---------------------------------------------------------------------------------


def agent_run(tmp_path, url, *flags):
    """`agent run` on a one-file workspace against `url`: (exit code, the JSON report)."""
    root = tmp_path / "ws"
    root.mkdir(exist_ok=True)
    (root / "stats.py").write_text("def mean(items):\n    return sum(items) / len(items)\n")
    (tmp_path / "task.md").write_text("Make mean() safe for empty lists.\n")
    report = tmp_path / "report.json"
    argv = [str(tmp_path / "task.md"), "--workspace", str(root), "--json", str(report), *flags]
    argv += ["--model", "openai/replay-model", "--api-base", url]
    return run_command(build_parser().parse_args(argv)), json.loads(report.read_text())


DONE = Turn("```done\nNothing to change.\n```")


def test_a_busy_server_and_a_dropped_connection_are_retried_and_said(tmp_path, capsys):
    busy = Turn(raw='{"error": {"message": "queue full"}}', raw_type="application/json", status=429,
                headers={"Retry-After": "0"})
    dropped = Turn(cut_after=0)  # the connection closed before any answer: a server restarting
    with ReplayServer([Turn("```read stats.py```"), busy, dropped, DONE]) as server:
        code, report = agent_run(tmp_path, server.url)
    err = capsys.readouterr().err
    assert code == ExitCode.OK and report["status"] == "done" and len(server.requests) == 4
    assert "is busy" in err and "unreachable" in err and err.count("trying again in") == 2


def test_a_server_dying_mid_reply_ends_with_exit_4_and_a_complete_transcript_and_the_run_resumes(tmp_path, capsys):
    from agent.transcript import read_events

    with ReplayServer([Turn("```read stats.py```"), Turn("I will now edit the file " * 5, cut_after=4)]) as server:
        code, report = agent_run(tmp_path, server.url)
    out = capsys.readouterr().out
    assert code == ExitCode.UNAVAILABLE and report["status"] == "unavailable"
    assert "stopped in the middle of a reply" in report["reason"] and server.url in report["reason"]
    assert f"agent run --resume {report['run_id']}" in out
    events = read_events(Path(report["transcript"]))
    assert events[-1]["type"] == "end" and events[-1]["exit_code"] == ExitCode.UNAVAILABLE
    assert report["steps"] == 1 and report["tool_calls"][0]["status"] == "ok"  # the turn before it is kept

    with ReplayServer([DONE]) as server:
        argv = ["--resume", report["run_id"], "--json", str(tmp_path / "report.json"), "--api-base", server.url]
        code = run_command(build_parser().parse_args(argv))
    resumed = json.loads((tmp_path / "report.json").read_text())
    assert code == ExitCode.OK and resumed["status"] == "done" and resumed["steps"] == 2
    assert server.requests[0]["messages"][-1]["content"].startswith("[read stats.py: ok]")


def test_a_turn_retries_a_server_that_is_not_there_only_within_its_time():
    from agent.client import Model, ModelUnavailable
    from decoding.serving.launch import free_port

    model = Model("openai/replay-model", f"http://127.0.0.1:{free_port()}/v1")
    said: list[str] = []
    with pytest.raises(ModelUnavailable, match=r"unreachable at http://127\.0\.0\.1.*tried for 2 s"):
        model.complete([{"role": "user", "content": "hi"}], timeout=2, on_retry=said.append)
    assert said and all("trying again in" in line for line in said)


# -- reads ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["read", "read lines", "edit", "overwrite"])
def test_a_folder_swapped_for_a_symlink_after_the_check_is_not_read_through(tmp_path, monkeypatch, tool):
    root, outside = tmp_path / "ws", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.txt").write_text("inside\n")
    (outside / "a.txt").write_text("TOP SECRET\n")
    ws = Workspace(root)
    checked = Workspace.resolve

    def resolve_then_swap(self, path):
        real = checked(self, path)
        (root / "sub" / "a.txt").unlink()
        (root / "sub").rmdir()
        (root / "sub").symlink_to(outside)  # between the check and the open
        return real

    monkeypatch.setattr(Workspace, "resolve", resolve_then_swap)
    result = {
        "read": lambda: ws.read("sub/a.txt"),
        "read lines": lambda: ws.read("sub/a.txt", 1, 1),
        "edit": lambda: ws.edit("sub/a.txt", 'delete("TOP")', dry_run=True),
        "overwrite": lambda: ws.create("sub/a.txt", "x\n", overwrite=True, dry_run=True),
    }[tool]()
    assert result.status != OK and "replaced by a symlink" in result.output
    assert "TOP SECRET" not in result.output and "TOP SECRET" not in str(result.data)
    assert (outside / "a.txt").read_text() == "TOP SECRET\n"


def test_the_embedded_servers_start_is_inside_the_runs_timeout(tmp_path, capsys, monkeypatch):
    from decoding.serving import launch

    never_ready = [sys.executable, "-c", "import time; time.sleep(60)"]  # a server that never answers
    monkeypatch.setattr(launch, "SERVER_COMMAND", never_ready)
    (tmp_path / "ws").mkdir()
    (tmp_path / "task.md").write_text("Anything.\n")
    report = tmp_path / "report.json"
    argv = [str(tmp_path / "task.md"), "--workspace", str(tmp_path / "ws"), "--json", str(report),
            "--model", "embedded", "--allow-demo-model", "--timeout", "2"]
    code = run_command(build_parser().parse_args(argv))
    result = json.loads(report.read_text())
    assert code == ExitCode.BUDGET and result["status"] == "budget"
    assert "time budget ran out while the embedded server was starting" in result["reason"]
    assert "did not answer" in result["reason"] and "within 2 s" in result["reason"]
