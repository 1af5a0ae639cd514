"""`agent run --edit-format`: the model edits in the chosen format, end to end against a replay server."""

import json
import urllib.request

import pytest
from replay import ReplayServer, Turn

from agent.headless import build_parser, main, run_command
from agent.protocol import parse_actions
from decoding.serving.launch import EmbeddedServer
from evals.grounded import EXAMPLES
from tools.formats import agent_format, agent_format_names
from tools.formats.lines import REPLACE
from tools.grounding.reply import ReplyFollower
from tools.journal import Journal
from tools.workspace import Workspace

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


def run(ws, capsys, server_url, *flags, model="openai/replay-model"):
    """Run `agent run` as the command line would; returns (exit code, stderr, report)."""
    report = ws.parent / "report.json"
    argv = [str(ws.parent / "task.md"), "--workspace", str(ws), "--json", str(report)]
    argv += ["--model", model, "--api-base", server_url, *flags]
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



SEARCH_REPLACE_SHOT = EXAMPLES[: EXAMPLES.index("```edit")] + (  # the grounded eval's first shot, in search/replace
    '```search-replace config.py\n<<<<<<< SEARCH\n    "timeout": 10,\n=======\n    "timeout": 30,\n>>>>>>> REPLACE\n'
    "```\n\n"
)


@pytest.mark.slow
def test_what_the_embedded_model_writes_in_a_grounded_search_replace_block_applies(ws):
    """The demo model cannot follow the agent's chat, so it continues a document that leaves the agent's
    ```search-replace PATH block open, sent as the agent's client sends a turn (the file as `prediction`, grounding
    for its path). It writes a SEARCH line, the divider and a REPLACE line, then ends the block: with
    `>>>>>>> REPLACE` and a fence (int8 weights, the default), or with a fence line where the marker belongs (float32;
    inside the block that line is text to the server and to the agent alike, so the marker is added). The block goes
    through the agent's protocol and Workspace.edit in that format and applies."""
    opened = "```search-replace stats.py\n<<<<<<< SEARCH\n"
    prompt = f"{SEARCH_REPLACE_SHOT}File stats.py:\n```\n{STATS}```\nTask: Make mean() safe for empty lists.\n{opened}"
    body = {
        "prompt": prompt, "max_tokens": 48, "temperature": 0,
        "prediction": {"type": "content", "content": STATS}, "grounding": {"mode": "edit", "path": "stats.py"},
    }
    with EmbeddedServer() as server:
        data = json.dumps({"model": server.model_id, **body}).encode()
        request = urllib.request.Request(f"{server.api_base}/completions", data, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            answer = json.loads(response.read())
        assert "(int8 weights) at http://127.0.0.1:" in server.log_tail(1 << 20)  # the default, said as it starts
    assert answer["usage"]["grounding"]["blocks"] == 1
    text = answer["choices"][0]["text"]
    written = text[: text.index("\n```") + 1]  # up to the fence line it closes with
    assert "\n=======\n" in written, text
    if not written.endswith(f"\n{REPLACE}\n"):  # a fence where the marker belongs: text inside the block
        assert REPLACE not in written, text
        written += f"{REPLACE}\n"
    edit_format = agent_format("search-replace")
    (action,) = parse_actions(f"{opened}{written}```\n", edit_format)
    assert action.tool == "edit" and action.args["path"] == "stats.py"
    result = Workspace(ws).edit("stats.py", action.args["script"], edit_format=edit_format)
    assert result.status == "ok", result.output
    assert (ws / "stats.py").read_text() != STATS


def test_a_fence_line_inside_a_search_replace_block_is_the_files_text_as_grounding_reads_it(tmp_path):
    readme = "Run:\n```\nmake\n```\n"
    (tmp_path / "README.md").write_text(readme)
    reply = (
        "```search-replace README.md\n<<<<<<< SEARCH\n```\nmake\n```\n=======\n```\nmake test\n```\n"
        ">>>>>>> REPLACE\n```\n\nThat is all.\n```done\nok\n```"
    )
    edit_format = agent_format("search-replace")
    edit, finish = parse_actions(reply, edit_format)
    assert finish.tool == "done"
    assert Workspace(tmp_path).edit("README.md", edit.args["script"], edit_format=edit_format).status == "ok"
    assert (tmp_path / "README.md").read_text() == "Run:\n```\nmake test\n```\n"


@pytest.mark.parametrize("name", agent_format_names())
def test_the_embedded_server_grounds_the_agents_block_of_each_format_in_the_file_of_its_path(name):
    edit_format = agent_format(name)
    worked = edit_format.reference(STATS, FIXED).rstrip("\n") + "\n"
    reply = ReplyFollower(STATS, "stats.py")  # the request: prediction and grounding {"mode": "edit", "path"}
    assert reply.read(f"Fixing it.\n```{edit_format.fence} stats.py\n") and reply.block is not None
    assert reply.block.source == STATS  # grounded in the file, not only in the format's syntax
    assert reply.read(worked + "```\n") and reply.block is None and reply.blocks == 1


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from decoding.engine.tokenizer import tokenizer_dir

    return AutoTokenizer.from_pretrained(tokenizer_dir())


@pytest.mark.parametrize("name", agent_format_names())
def test_the_embedded_server_grounds_the_replayed_block_of_each_format_from_the_agents_own_request(
        ws, capsys, tokenizer, name):
    """The task replayed on a local server (`hosted_vllm/`): the agent's request for its edit turn, read by the
    embedded server's own request parser, gives the grounding the server decodes with (the file, its path), and the
    replayed block is allowed token by token (Gemma's tokens) and grounded; the same block in another file is not."""
    from decoding.engine.grounding import PROMPT_TAIL, EditGrounding, vocabulary
    from decoding.serving.chat import stop_token_ids
    from decoding.serving.server import parse_request

    edit_format = agent_format(name)
    block = f"```{edit_format.fence} stats.py\n{edit_format.reference(STATS, FIXED).rstrip()}\n```"
    with ReplayServer([Turn("```read stats.py```"), Turn(block), finish()]) as server:
        code, err, _ = run(ws, capsys, server.url, "--edit-format", name, model="hosted_vllm/replay-model")
    assert code == 0 and (ws / "stats.py").read_text() == FIXED, err
    job = parse_request(server.requests[1], chat=True, model_name="replay-model")
    assert (job.grounding, job.grounding_path, job.prediction) == ("edit", "stats.py", STATS)
    reply = tokenizer(block, add_special_tokens=False).input_ids

    def grounded(source: str) -> tuple[EditGrounding, int]:
        """The grounding for `source` after the replayed tokens it allows, and how many it allowed."""
        grounding = EditGrounding(vocabulary(tokenizer), source, stop_token_ids(tokenizer), job.grounding_path,
                                  job.prompt[-PROMPT_TAIL:])
        for taken, token in enumerate(reply):
            if not grounding.allows(token):
                return grounding, taken
            grounding.advance(token)
        return grounding, len(reply)

    grounding, taken = grounded(job.prediction)
    assert taken == len(reply) and grounding.stats.blocks == 1 and grounding.stats.released_blocks == 0
    assert grounding.reply.block is None  # the block was read to its closing fence
    grounding, taken = grounded("def mean(items):\n    return 0\n")  # a file the block does not fit
    assert taken < len(reply) and grounding.reply.block is not None  # refused inside the block


def test_a_resumed_run_keeps_the_edit_format_its_conversation_teaches(ws, capsys):
    with ReplayServer([Turn("```read stats.py```")]) as server:
        code, _, report = run(ws, capsys, server.url, "--edit-format", "udiff", "--max-steps", "1")
    assert code == 3
    resume = ["--resume", report["run_id"], "--json", str(ws.parent / "report.json")]
    assert run_command(build_parser().parse_args([*resume, "--edit-format", "ot"])) == 2
    assert "edits with --edit-format udiff" in capsys.readouterr().err
    with ReplayServer([Turn(FIX_MEAN["udiff"]), finish()]) as server:
        assert run_command(build_parser().parse_args([*resume, "--api-base", server.url])) == 0
    assert (ws / "stats.py").read_text() == FIXED


def test_a_udiff_hunk_not_in_the_file_is_refused_with_the_closest_lines(ws):
    hunk = FIX_MEAN["udiff"].split("\n", 1)[1].removesuffix("```").replace("def mean(items)", "def mean(values)")
    result = Workspace(ws).edit("stats.py", hunk, edit_format=agent_format("udiff"))
    assert result.status == "error" and (ws / "stats.py").read_text() == STATS
    assert "block 1: its old lines are not in the file. Did you mean these lines of the file?\n" in result.output
    assert "\ndef mean(items):\n    return total(items) / len(items)\n" in result.output
