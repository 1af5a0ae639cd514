"""`agent run --edit-format`: the model edits in the chosen format, end to end against a replay server."""

import json

import pytest
from replay import ReplayServer, Turn

from agent.headless import build_parser, main, run_command
from tools.journal import Journal

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # litellm on newer pydantic

STATS = "def total(items):\n    return sum(items)\n\n\ndef mean(items):\n    return total(items) / len(items)\n"
FIXED = STATS.replace("/ len(items)", "/ max(len(items), 1)")
FIX_MEAN = {  # the same fix to mean(), in each format
    "ot": '```edit stats.py\nretain("return total(items) / ")\ndelete("len(items)")\ninsert("max(len(items), 1)")\n```',
    "search-replace": (
        "```search-replace stats.py\n<<<<<<< SEARCH\n    return total(items) / len(items)\n=======\n"
        "    return total(items) / max(len(items), 1)\n>>>>>>> REPLACE\n```"
    ),
    "udiff": (
        "```diff stats.py\n@@ ... @@\n def mean(items):\n-    return total(items) / len(items)\n"
        "+    return total(items) / max(len(items), 1)\n```"
    ),
}
TEACHES = {"ot": "# Edit scripts", "search-replace": "# Search/replace blocks", "udiff": "# Unified diffs"}


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "stats.py").write_text(STATS)
    (tmp_path / "task.md").write_text("Make mean() safe for empty lists.\n")
    return root


def run(ws, capsys, server_url, *flags):
    """Run `agent run` as the command line would; returns (exit code, stderr, report)."""
    report = ws.parent / "report.json"
    argv = [str(ws.parent / "task.md"), "--workspace", str(ws), "--json", str(report)]
    argv += ["--model", "openai/replay-model", "--api-base", server_url, *flags]
    code = run_command(build_parser().parse_args(argv))
    return code, capsys.readouterr().err, json.loads(report.read_text())


def finish(text: str = "mean() no longer divides by zero.") -> Turn:
    return Turn(f"```done\n{text}\n```")


@pytest.mark.parametrize("name", ["ot", "search-replace", "udiff"])
def test_a_task_done_in_each_edit_format_lands_exactly_and_undoes(ws, capsys, name):
    turns = [Turn("```read stats.py```"), Turn(FIX_MEAN[name]), finish()]
    with ReplayServer(turns) as server:
        code, err, report = run(ws, capsys, server.url, "--edit-format", name)
    assert code == 0, err
    assert (ws / "stats.py").read_text() == FIXED
    assert [edit["status"] for edit in report["edits"]] == ["ok"]
    system = server.requests[0]["messages"][0]["content"]
    assert [heading for heading in TEACHES.values() if heading in system] == [TEACHES[name]]
    assert "applied to stats.py" in observation(server.requests[2])
    Journal().undo(ws / "stats.py")
    assert (ws / "stats.py").read_text() == STATS


def observation(request: dict) -> str:
    """What the model was told last in this request."""
    return request["messages"][-1]["content"]


def test_a_search_block_not_in_the_file_is_refused_with_the_closest_lines_and_a_fix_applies(ws, capsys):
    wrong = FIX_MEAN["search-replace"].replace("return total(items) / len(items)", "return total(items)/len(items)")
    turns = [Turn(wrong), Turn(FIX_MEAN["search-replace"]), finish()]
    with ReplayServer(turns) as server:
        code, _, report = run(ws, capsys, server.url, "--edit-format", "search-replace")
    refusal = observation(server.requests[1])
    assert "block 1: its old lines are not in the file. Did you mean these lines of the file?" in refusal
    assert "\n    return total(items) / len(items)\n" in refusal and "The file is unchanged." in refusal
    assert code == 0 and (ws / "stats.py").read_text() == FIXED
    assert [edit["status"] for edit in report["edits"]] == ["error", "ok"]


@pytest.mark.parametrize("name", ["search-replace", "udiff"])
def test_a_block_that_adds_a_syntax_error_is_refused(ws, capsys, name):
    broken = FIX_MEAN[name].replace("max(len(items), 1)", "max(len(items), 1")
    with ReplayServer([Turn(broken), Turn("```failed\ncannot\n```")]) as server:
        code, _, _ = run(ws, capsys, server.url, "--edit-format", name)
    assert "refused: the edit would add 1 syntax error(s) to this python file" in observation(server.requests[1])
    assert code == 1 and (ws / "stats.py").read_text() == STATS


def test_an_edit_in_another_format_than_the_chosen_one_is_not_an_action(ws, capsys):
    turns = [Turn(FIX_MEAN["ot"]), Turn("```failed\nwrong format\n```")]
    with ReplayServer(turns) as server:
        run(ws, capsys, server.url, "--edit-format", "udiff")
    assert "```diff PATH``` with the hunks" in observation(server.requests[1])
    assert (ws / "stats.py").read_text() == STATS


def test_agent_toml_chooses_the_edit_format_and_the_flag_overrides_it(ws, capsys, monkeypatch):
    (ws / "agent.toml").write_text('edit_format = "udiff"\n')
    with ReplayServer([Turn(FIX_MEAN["udiff"]), finish()]) as server:
        code, _, _ = run(ws, capsys, server.url)
    assert code == 0 and "# Unified diffs" in server.requests[0]["messages"][0]["content"]
    monkeypatch.setenv("RETAIN_EDIT_FORMAT", "search-replace")
    with ReplayServer([finish()]) as server:
        run(ws, capsys, server.url)
    assert "# Search/replace blocks" in server.requests[0]["messages"][0]["content"]
    with ReplayServer([finish()]) as server:
        run(ws, capsys, server.url, "--edit-format", "ot")
    assert "# Edit scripts" in server.requests[0]["messages"][0]["content"]


@pytest.mark.parametrize(("name", "why"), [("yaml", "is no edit format"), ("whole", "is not an edit format the agent")])
def test_an_unknown_or_unsuitable_edit_format_is_a_usage_error_listing_the_choices(ws, capsys, name, why):
    code = main([str(ws.parent / "task.md"), "--workspace", str(ws), "--model", "m", "--edit-format", name])
    err = capsys.readouterr().err
    assert code == 2 and why in err
    assert "choose one of search-replace, udiff, ot, ot-counts, ot-lines" in err


def test_an_unknown_edit_format_in_agent_toml_is_refused_naming_the_choices(ws, capsys):
    (ws / "agent.toml").write_text('edit_format = "whole"\n')
    code = main([str(ws.parent / "task.md"), "--workspace", str(ws), "--model", "m"])
    assert code == 4 and "edit_format: 'whole' is not an edit format the agent offers" in capsys.readouterr().err


def test_native_tools_describe_the_chosen_format(ws, capsys):
    turns = [Turn(tool_calls=[("edit", {"path": "stats.py", "script": FIX_MEAN["udiff"].split("\n", 1)[1][:-3]})]),
             finish()]
    with ReplayServer(turns) as server:
        code, _, _ = run(ws, capsys, server.url, "--edit-format", "udiff", "--tools", "native")
    (edit,) = [t["function"] for t in server.requests[0]["tools"] if t["function"]["name"] == "edit"]
    assert "unified diff" in edit["description"] and edit["parameters"]["properties"]["script"]["description"] == (
        "the hunks"
    )
    assert code == 0 and (ws / "stats.py").read_text() == FIXED

