"""The plain-text protocol on its own: fenced blocks in, actions out."""

import textwrap

import pytest

from agent.loop import system_prompt
from agent.protocol import action_from_call, parse_actions, tool_specs
from tools.formats import agent_format, agent_format_names
from tools.workspace import Workspace


def test_blocks_become_actions_in_order_and_other_fences_are_prose():
    reply = """I will look first.

```python
print("this is an example, not an action")
```

```read src/app.py 10-40```

```edit src/app.py
retain("def main(")
insert("x")
```

```shell
pytest -q tests/test_app.py
```
"""
    actions = parse_actions(reply)
    assert [a.tool for a in actions] == ["read", "edit", "shell"]
    assert actions[0].args == {"path": "src/app.py", "start_line": 10, "end_line": 40}
    assert actions[1].args == {"path": "src/app.py", "script": 'retain("def main(")\ninsert("x")\n'}
    assert actions[2].args == {"command": "pytest -q tests/test_app.py\n"}


def test_create_keeps_content_exactly_and_a_longer_fence_allows_backticks_inside():
    reply = "````create docs/usage.md\n# Usage\n\n```sh\nagent run task.md\n```\n````\n"
    (action,) = parse_actions(reply)
    assert action.tool == "create"
    assert action.args == {
        "path": "docs/usage.md",
        "content": "# Usage\n\n```sh\nagent run task.md\n```\n",
        "overwrite": False,
    }
    (overwrite,) = parse_actions("```overwrite a.txt\nnew\n```")
    assert overwrite.args["overwrite"] is True


def test_list_search_done_and_failed():
    reply = "```list src/**/*.py```\n```search **/*.py\ndef \\w+\\(\n```\n```done\nAdded the flag.\n```"
    actions = parse_actions(reply)
    assert [(a.tool, a.args) for a in actions] == [
        ("list", {"pattern": "src/**/*.py"}),
        ("search", {"regex": "def \\w+\\(", "glob": "**/*.py"}),
        ("done", {"summary": "Added the flag."}),
    ]
    (failed,) = parse_actions("```failed\nThe tests need a database.\n```")
    assert failed.tool == "failed" and failed.args["summary"] == "The tests need a database."


def test_an_unclosed_block_is_reported_not_run():
    actions = parse_actions('```edit app.py\nretain("x")\ninsert("y")')
    assert [a.tool for a in actions] == ["invalid"]
    assert "not closed" in actions[0].args["error"]


def test_no_blocks_no_actions():
    assert parse_actions("I think the bug is in the parser.") == []
    assert parse_actions("```editor app.py\nx\n```") == []


def test_native_tool_calls_are_checked():
    assert action_from_call("c1", "read", '{"path": "a.py"}').args == {"path": "a.py"}
    assert "not valid JSON" in action_from_call("c1", "read", '{"path": ').args["error"]
    assert "no tool 'rm'" in action_from_call("c1", "rm", "{}").args["error"]
    names = [spec["function"]["name"] for spec in tool_specs()]
    assert names == ["read", "edit", "create", "list", "search", "shell", "done", "failed"]


@pytest.mark.parametrize("name", agent_format_names())
def test_every_example_in_the_system_prompt_parses_and_the_worked_edit_applies(tmp_path, name):
    edit_format = agent_format(name)
    prompt = system_prompt(edit_format)
    actions = parse_actions(prompt, edit_format)
    assert {a.tool for a in actions} == {"read", "list", "search", "shell", "edit", "create", "done", "failed"}
    (worked,) = [a for a in actions if a.tool == "edit" and a.args["path"] == "stats.py"]
    stats = "def total(items):\n    return sum(items)\n\n\ndef mean(items):\n    return total(items) / len(items)\n"
    assert textwrap.indent(stats, "    ").rstrip() in prompt  # the file the example edits is shown as it is
    (tmp_path / "stats.py").write_text(stats)
    result = Workspace(tmp_path).edit("stats.py", worked.args["script"], edit_format=edit_format)
    placed_by_quotes = {"anchor"} if name == "ot-lines" else set()  # a count-free script is placed by its quotes
    assert result.status == "ok" and {c["kind"] for c in result.data["corrections"]} <= placed_by_quotes
    assert (tmp_path / "stats.py").read_text() == (
        'def total(items):\n    """Sum of the items."""\n    return sum(items)\n\n\n'
        "def mean(items):\n    return total(items) / max(len(items), 1)\n"
    )


@pytest.mark.parametrize("name", agent_format_names())
def test_the_system_prompt_teaches_the_chosen_format_and_no_other(name):
    prompt = system_prompt(agent_format(name))
    teaches = {"edit": "retain(", "search-replace": "<<<<<<< SEARCH", "diff": "@@ ... @@"}
    fence = agent_format(name).fence
    assert f"```{fence} src/app.py" in prompt and teaches[fence] in prompt
    assert not [other for other in teaches if other != fence and (f"```{other} " in prompt or teaches[other] in prompt)]
    assert "$" not in prompt  # every slot of the template is filled
