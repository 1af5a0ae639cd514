"""The loop's hooks for a front end: streamed text, per-edit approval before writing, and cancellation."""

import threading
import time
from pathlib import Path

import pytest
from replay import ReplayServer, Turn

from agent.client import Model
from agent.config import Settings
from agent.loop import Agent, EditProposal, Hooks, RunState, first_messages
from agent.transcript import Redactor, Transcript, read_events
from tools.workspace import Workspace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # litellm on newer pydantic

STATS = "def total(items):\n    return sum(items)\n\n\ndef mean(items):\n    return total(items) / len(items)\n"
FIX_MEAN = 'retain("return total(items) / ")\ndelete("len(items)")\ninsert("max(len(items), 1)")'


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "stats.py").write_text(STATS)
    return root


def make_agent(ws: Path, url: str, settings: Settings | None = None, **hooks) -> tuple[Agent, RunState, Path]:
    path = ws.parent / "t.jsonl"
    model, transcript = Model("openai/replay-model", url), Transcript(path, Redactor({}))
    agent = Agent(model, Workspace(ws), transcript, settings or Settings(max_steps=4), Hooks(**hooks))
    return agent, RunState("r1", "task", first_messages("task", Workspace(ws))), path


def test_reply_text_streams_to_on_text_in_pieces_and_each_turn_and_tool_is_reported(ws):
    pieces, turns, tools = [], [], []
    reply = "Reading the file first.\n```read stats.py```"
    with ReplayServer([Turn(reply), Turn("```done\nok\n```")]) as server:
        agent, state, _ = make_agent(
            ws, server.url, on_text=pieces.append, on_turn=turns.append, on_tool=lambda a, r: tools.append((a, r))
        )
        outcome = agent.run(state)
    assert outcome.status == "done"
    assert len(pieces) > 3 and "".join(pieces) == reply + "```done\nok\n```"
    assert [t.usage["completion_tokens"] for t in turns] == [20, 20]
    (action, result), = tools
    assert action.tool == "read" and result.output.startswith("stats.py: 6 lines") and STATS in result.output


def test_an_approved_edit_is_shown_before_it_is_written(ws):
    seen = []

    def approve(proposal: EditProposal) -> bool:
        seen.append((proposal, (ws / "stats.py").read_text()))
        return True

    with ReplayServer([Turn(f"```edit stats.py\n{FIX_MEAN}\n```"), Turn("```done\nFixed.\n```")]) as server:
        agent, state, _ = make_agent(ws, server.url, approve_edit=approve)
        outcome = agent.run(state)
    (proposal, text_when_asked), = seen
    assert text_when_asked == STATS  # nothing written before the answer
    assert proposal.tool == "edit" and proposal.file == "stats.py"
    assert "-    return total(items) / len(items)\n+    return total(items) / max(len(items), 1)\n" in proposal.diff
    assert proposal.notes == [
        'op 0 retain("return total(items) / "): moved from line 1, column 1 (offset 0) to line 6, column 5 '
        "(offset 63, +63): the quoted text is there"
    ]  # the applier's correction, as the model is told it
    assert outcome.status == "done" and "max(len(items), 1)" in (ws / "stats.py").read_text()


def test_a_rejected_edit_leaves_the_file_unchanged_tells_the_model_and_does_not_block_done(ws):
    turns = [Turn(f"```edit stats.py\n{FIX_MEAN}\n```"), Turn("```done\nLeft as it is.\n```")]
    with ReplayServer(turns) as server:
        agent, state, _ = make_agent(ws, server.url, approve_edit=lambda proposal: False)
        outcome = agent.run(state)
    assert (ws / "stats.py").read_text() == STATS
    assert "the user rejected this edit" in server.requests[1]["messages"][-1]["content"]
    assert state.edits[0]["status"] == "refused" and state.edits[0]["declined"] is True
    assert outcome.status == "done"


def test_a_refused_edit_is_not_put_to_the_approver(ws):
    asked = []
    turns = [Turn('```edit stats.py\ndelete("no such text")\n```'), Turn("```failed\nCannot.\n```")]
    with ReplayServer(turns) as server:
        agent, state, _ = make_agent(ws, server.url, approve_edit=asked.append)
        agent.run(state)
    assert asked == [] and "The file is unchanged." in server.requests[1]["messages"][-1]["content"]


def test_a_new_file_is_put_to_the_approver_as_a_diff(ws):
    proposals = []
    turns = [Turn("```create notes.txt\nhello\n```"), Turn("```done\nok\n```")]
    with ReplayServer(turns) as server:
        agent, state, _ = make_agent(ws, server.url, approve_edit=lambda p: proposals.append(p) or False)
        agent.run(state)
    (proposal,) = proposals
    assert proposal.tool == "create" and proposal.diff.endswith("+hello\n") and not (ws / "notes.txt").exists()


def test_cancel_mid_stream_ends_the_run_closes_the_stream_and_keeps_what_was_said(ws):
    cancel = threading.Event()
    seen = []

    def on_text(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()

    long_reply = "Let me think about this carefully. " * 40 + f"```edit stats.py\n{FIX_MEAN}\n```"
    with ReplayServer([Turn(long_reply, chunk_delay=0.01)]) as server:
        agent, state, path = make_agent(ws, server.url, on_text=on_text, cancel=cancel)
        outcome = agent.run(state)
        deadline = threading.Event()
        for _ in range(100):  # the server notices the closed connection on its next write
            if server.dropped:
                break
            deadline.wait(0.05)
    assert outcome.status == "cancelled" and outcome.exit_code == 1
    assert server.dropped == 1 and len(server.requests) == 1
    assert (ws / "stats.py").read_text() == STATS
    kept = state.messages[-1]
    assert kept["role"] == "assistant" and kept["content"].startswith("".join(seen[:3]))
    assert kept["content"].endswith("[the user stopped this reply before it was finished]")
    events = read_events(path)
    assert events[-1]["type"] == "end" and events[-1]["status"] == "cancelled"
    resumed = RunState.from_events([{"type": "start", "run_id": "r1", "task": "task"}, *events])
    assert resumed.messages == [kept]  # the first messages are the caller's to record


def test_cancel_between_turns_ends_the_run_before_the_next_request(ws):
    cancel = threading.Event()
    turns = [Turn("```read stats.py```"), Turn("```done\nok\n```")]
    with ReplayServer(turns) as server:
        agent, state, _ = make_agent(ws, server.url, on_tool=lambda a, r: cancel.set(), cancel=cancel)
        outcome = agent.run(state)
    assert outcome.status == "cancelled" and len(server.requests) == 1
    assert state.messages[-1]["content"].startswith("[read stats.py: ok]")  # the turn's results were recorded


def test_without_hooks_an_edit_is_written_and_a_command_that_needs_asking_is_refused(ws):
    turns = [Turn(f"```edit stats.py\n{FIX_MEAN}\n```\n```shell\ntouch ran.txt\n```"), Turn("```done\nok\n```")]
    with ReplayServer(turns) as server:
        agent, state, _ = make_agent(ws, server.url, Settings(max_steps=4, shell="ask"))
        outcome = agent.run(state)
    assert outcome.status == "done" and "max(len(items), 1)" in (ws / "stats.py").read_text()
    assert not (ws / "ran.txt").exists() and "nobody is at a terminal" in server.requests[1]["messages"][-1]["content"]


def test_the_time_budget_counts_from_when_the_run_began(ws):
    with ReplayServer([Turn("```done\nok\n```")]) as server:
        agent, state, _ = make_agent(ws, server.url, Settings(max_steps=4, timeout=60))
        outcome = agent.run(state, started=time.monotonic() - 61)  # a server start spent the whole budget
    assert outcome.status == "budget" and "time budget ran out (60 s)" in outcome.reason
    assert server.requests == []
