"""Faults a tool meets over weeks of use: odd trees, repeating models, killed processes, dropped servers."""

import json
import os

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
