"""The Retain app driven with Textual's pilot against the replay server: prompts, streamed replies, edit
approval, cancelling, undo, the file picker, sessions and startup."""

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest
from replay import ReplayServer, Turn
from textual.widgets import OptionList
from tui_helpers import FIX_MEAN, FIXED, SIZE, SPECULATION, STATS, make_app, make_workspace, send, until, words

from agent import detect
from agent.config import Settings, load_settings
from decoding.serving import launch as embedded
from decoding.serving.launch import free_port
from tools.state import sessions_dir
from tui.app import RetainApp, build_app
from tui.screens import CommandApproval, EditApproval, FilePicker, ModelSetup, SessionPicker
from tui.session import list_sessions
from tui.widgets import AssistantMessage, Note, StatusBar, ToolCall, UserMessage

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # litellm on newer pydantic


@pytest.fixture
def ws(tmp_path):
    return make_workspace(tmp_path)


def drive(app, scenario):
    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await scenario(pilot)

    asyncio.run(main())


def replies(app) -> list[str]:
    return [m.source for m in app.query(AssistantMessage)]


def notes(app) -> list[str]:
    return [str(n.render()) for n in app.query(Note)]


def tool_titles(app) -> list[str]:
    return [t.title for t in app.query(ToolCall)]


def test_a_prompt_streams_the_answer_and_an_approved_edit_is_written(ws):
    turns = [
        Turn("Let me read **stats.py** first.\n```read stats.py```"),
        Turn(f"```edit stats.py\n{FIX_MEAN}\n```", completion_tokens=31, usage_extra={"speculation": SPECULATION}),
        Turn("```done\nmean() no longer divides by zero.\n```", usage_extra={"speculation": SPECULATION}),
    ]

    async def scenario(pilot):
        app = pilot.app
        await send(pilot, "make mean() safe for empty lists")
        await until(pilot, lambda: isinstance(app.screen, EditApproval), what="the approval screen")
        assert (ws / "stats.py").read_text() == STATS  # shown before anything is written
        question = str(app.screen.query_one("#question").render())
        assert question == "Apply this edit to stats.py?  +1 −1"
        assert "moved from line 1, column 1 (offset 0) to line 6" in str(app.screen.query_one("#notes").render())
        shown_diff = str(app.screen.query_one("#diff Static").render())
        assert "-     return total(items) / len(items)" in shown_diff
        assert "+     return total(items) / max(len(items), 1)" in shown_diff
        await pilot.press("y")
        await until(pilot, lambda: not app.running, what="the run to end")
        assert (ws / "stats.py").read_text() == FIXED
        assert [str(m.render()) for m in app.query(UserMessage)] == ["› make mean() safe for empty lists"]
        assert replies(app)[0] == "Let me read **stats.py** first.\n```read stats.py```"
        assert tool_titles(app) == ["✓ read stats.py  (7 lines)", "✓ edit stats.py  +1 −1"]
        assert notes(app)[-1] == "● done: mean() no longer divides by zero."
        status = str(app.query_one(StatusBar).render())
        assert "openai/replay-model" in status and "accept 75%" in status and "mean run 2.50" in status
        saved = words(FIXED) - words(FIX_MEAN)
        assert f"saved {saved} tok ({saved / words(FIXED):.0%} vs rewrites)" in status

    with ReplayServer(turns) as server:
        drive(make_app(ws, server.url), scenario)
    assert server.requests[0]["messages"][-1]["content"].endswith("Task:\nmake mean() safe for empty lists")


def test_a_rejected_edit_leaves_the_file_unchanged_and_a_refused_one_shows_the_applier_message(ws):
    turns = [
        Turn('```edit stats.py\ndelete("no such text")\n```'),
        Turn(f"```edit stats.py\n{FIX_MEAN}\n```"),
        Turn("```done\nLeft unchanged as asked.\n```"),
    ]

    async def scenario(pilot):
        app = pilot.app
        await send(pilot, "fix mean")
        await until(pilot, lambda: isinstance(app.screen, EditApproval), what="the approval screen")
        await pilot.press("n")
        await until(pilot, lambda: not app.running, what="the run to end")
        refused, rejected = app.query(ToolCall)
        assert refused.title == "✗ edit stats.py  (2 lines)" and not refused.collapsed  # open: the message is read
        assert "The file is unchanged." in str(refused.query_one(".output").render())
        assert rejected.title.startswith("⊘ edit stats.py") and not rejected.collapsed
        assert "the user rejected this edit" in str(rejected.query_one(".output").render())

    with ReplayServer(turns) as server:
        drive(make_app(ws, server.url), scenario)
    assert (ws / "stats.py").read_text() == STATS
    assert "the user rejected this edit" in server.requests[2]["messages"][-1]["content"]


def test_esc_stops_the_model_mid_stream_and_the_next_prompt_works(ws):
    long_reply = "I will look at every function in turn and explain each. " * 30 + "```read stats.py```"
    turns = [Turn(long_reply, chunk_delay=0.02), Turn("```done\nHello again.\n```")]

    async def scenario(pilot):
        app = pilot.app
        await send(pilot, "explain the code")
        await until(pilot, lambda: replies(app) and len(replies(app)[0]) > 20, what="streamed text")
        streamed = replies(app)[0]
        assert long_reply.startswith(streamed) and len(streamed) < len(long_reply)  # arriving in pieces
        await pilot.press("escape")
        await until(pilot, lambda: not app.running, what="the run to stop")
        assert notes(app)[-1] == "■ cancelled: stopped by the user while the model was writing"
        assert len(replies(app)[0]) < len(long_reply) and tool_titles(app) == []
        await send(pilot, "say hello")
        await until(pilot, lambda: not app.running and len(notes(app)) >= 3, what="the second run")
        assert notes(app)[-1] == "● done: Hello again."

    with ReplayServer(turns) as server:
        drive(make_app(ws, server.url), scenario)
    assert server.dropped == 1 and len(server.requests) == 2
    last_two = server.requests[1]["messages"][-2:]
    assert last_two[0]["role"] == "assistant" and "[the user stopped this reply" in last_two[0]["content"]
    assert last_two[1] == {"role": "user", "content": "say hello"}  # after a cut reply, roles still alternate


def test_auto_approve_then_ctrl_z_undoes_the_last_edit_and_the_model_is_told(ws):
    turns = [
        Turn(f"```edit stats.py\n{FIX_MEAN}\n```"),
        Turn("```done\nFixed.\n```"),
        Turn("```done\nNoted.\n```"),
    ]

    async def scenario(pilot):
        app = pilot.app
        await pilot.press("ctrl+t")
        assert app.auto_approve and "auto-approve" in str(app.query_one(StatusBar).render())
        await send(pilot, "fix mean")
        await until(pilot, lambda: not app.running and app.applied, what="the edit")
        assert not isinstance(app.screen, EditApproval) and (ws / "stats.py").read_text() == FIXED
        await pilot.press("ctrl+z")
        await until(pilot, lambda: (ws / "stats.py").read_text() == STATS, what="the undo")
        assert notes(app)[-1] == "↶ undid the last edit of stats.py (+1 −1)"
        await pilot.press("ctrl+z")  # nothing left of this session to undo
        await send(pilot, "thanks")
        await until(pilot, lambda: not app.running and len(server.requests) == 3, what="the next run")

    with ReplayServer(turns) as server:
        drive(make_app(ws, server.url), scenario)
    told = server.requests[2]["messages"][-1]["content"]
    assert told.endswith("\n\n(I undid your last edit of stats.py; it is back as it was before that edit.)\nthanks")
    assert (ws / "stats.py").read_text() == STATS


def test_a_shell_command_runs_only_once_the_user_approves_it(ws):
    turns = [Turn("```shell\ntouch approved.txt\n```\n```shell\ntouch refused.txt\n```"), Turn("```done\nok\n```")]

    async def scenario(pilot):
        app = pilot.app
        await send(pilot, "touch two files")
        await until(pilot, lambda: isinstance(app.screen, CommandApproval), what="the first command")
        assert str(app.screen.query_one("#command").render()) == "touch approved.txt"
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, CommandApproval) and len(app.query(ToolCall)) == 1)
        await pilot.press("n")
        await until(pilot, lambda: not app.running, what="the run to end")
        assert tool_titles(app) == ["✓ shell touch approved.txt  exit 0", "⊘ shell touch refused.txt"]

    with ReplayServer(turns) as server:
        drive(make_app(ws, server.url), scenario)
    assert (ws / "approved.txt").exists() and not (ws / "refused.txt").exists()


def test_at_opens_a_fuzzy_file_picker_that_inserts_the_path(ws):
    (ws / "src").mkdir()
    (ws / "src" / "statistics_helpers.py").write_text("x = 1\n")

    async def scenario(pilot):
        app = pilot.app
        await pilot.press(*"look at ", "@")
        await until(pilot, lambda: isinstance(app.screen, FilePicker), what="the picker")
        await pilot.press(*"sthelp")
        await pilot.pause(0.1)
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, FilePicker), what="the picker to close")
        assert app.query_one("#prompt").value == "look at src/statistics_helpers.py "

    with ReplayServer([]) as server:
        drive(make_app(ws, server.url), scenario)


def test_sessions_are_listed_at_start_and_resume_the_conversation(ws):
    async def first(pilot):
        await send(pilot, "read the stats module")
        await until(pilot, lambda: not pilot.app.running, what="the run")

    with ReplayServer([Turn("```read stats.py```"), Turn("```done\nRead it.\n```")]) as server:
        drive(make_app(ws, server.url), first)
    (info,) = list_sessions(ws)
    assert info.title == "read the stats module"

    async def second(pilot):
        app = pilot.app
        await until(pilot, lambda: isinstance(app.screen, SessionPicker), what="the session list")
        await pilot.press("down", "enter")
        await until(pilot, lambda: app.query(UserMessage), what="the earlier conversation")
        assert str(app.query_one(UserMessage).render()) == "› read the stats module"
        assert notes(app)[-1] == "● Read it."
        await send(pilot, "and the README?")
        await until(pilot, lambda: not app.running and len(server.requests) == 1, what="the run")

    with ReplayServer([Turn("```done\nIt has a title.\n```")]) as server:
        drive(make_app(ws, server.url), second)
    messages = server.requests[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[-1]["content"] == "[done: ok]\nrun ended as done\n\nand the README?"  # roles alternate
    assert len(list(sessions_dir().glob("*.jsonl"))) == 1  # the same session carried on
    events = [json.loads(line) for line in info.path.read_text().splitlines()]
    assert [e["text"] for e in events if e["type"] == "prompt"] == ["read the stats module", "and the README?"]


def test_a_resumed_session_keeps_the_edit_format_its_conversation_teaches(ws):
    async def first(pilot):
        await send(pilot, "read the stats module")
        await until(pilot, lambda: not pilot.app.running, what="the run")

    udiff_app = make_app(ws, "")
    udiff_app.settings.edit_format = "udiff"
    with ReplayServer([Turn("```read stats.py```"), Turn("```done\nRead it.\n```")]) as server:
        udiff_app.settings.api_base = server.url
        drive(udiff_app, first)
    assert "# Unified diffs" in server.requests[0]["messages"][0]["content"]
    hunk = "```diff stats.py\n@@ ... @@\n-    return sum(items)\n+    return sum(items, 0)\n```"

    async def second(pilot):
        app = pilot.app
        await until(pilot, lambda: isinstance(app.screen, SessionPicker), what="the session list")
        await pilot.press("down", "enter")
        await until(pilot, lambda: app.query(UserMessage), what="the earlier conversation")
        await send(pilot, "start the sum at 0")
        await until(pilot, lambda: isinstance(app.screen, EditApproval), what="the approval screen")
        await pilot.press("y")
        await until(pilot, lambda: not app.running and len(server.requests) == 2, what="the run")

    with ReplayServer([Turn(hunk), Turn("```done\nDone.\n```")]) as server:
        drive(make_app(ws, server.url), second)  # started with the default format, ot
    assert "sum(items, 0)" in (ws / "stats.py").read_text()


def test_the_first_frame_does_not_wait_for_the_embedded_server(ws, monkeypatch):
    stand_in = Path(__file__).parent / "stand_in_server.py"
    slow = f"sleep 2 && exec {sys.executable} {stand_in} --host 127.0.0.1 --port {{port}}"
    monkeypatch.setattr(embedded, "SERVER_COMMAND", ("bash", "-c", slow))
    app = RetainApp(Settings(model="embedded", tools="text"), ws, list_earlier=False)

    async def scenario(pilot):
        assert app.model is None  # the app is up while the server starts
        await until(pilot, lambda: "starting the embedded model server" in str(app.query_one(StatusBar).render()))
        await pilot.press(*"hello", "enter")  # sent as soon as the server answers
        await until(pilot, lambda: app.model is not None and not app.running and notes(app)[1:], what="the run")
        assert app.model.name == "openai/stand-in" and notes(app)[-1] == "● done: ok"

    drive(app, scenario)


def test_agent_alone_without_a_terminal_prints_the_help(capsys):
    from tui.cli import main

    assert main([]) == 2 and "agent tui" in capsys.readouterr().out


@pytest.fixture
def first_run(ws, tmp_path, monkeypatch):
    """A machine with no model configured, no provider key, and a stand-in OpenAI server on a free loopback port
    listed as vLLM's; the app opens in the workspace. Yields the server."""
    monkeypatch.chdir(ws)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for variable in ("RETAIN_MODEL", "RETAIN_API_BASE", *(name for name, _ in detect.PROVIDER_KEYS)):
        monkeypatch.delenv(variable, raising=False)
    turns = [Turn(f"```edit stats.py\n{FIX_MEAN}\n```", delay=0.5), Turn("```done\nFixed.\n```")]
    with ReplayServer(turns) as server:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        monkeypatch.setattr(detect, "KNOWN_PORTS", (("vLLM", port), ("Ollama", free_port())))
        yield server


def screen_text(app) -> str:
    """The text of the screen on top, its option list's rows included."""
    parts = [str(widget.render()) for widget in app.screen.query("Label, Static")]
    for listed in app.screen.query(OptionList):
        parts += [str(listed.get_option_at_index(i).prompt) for i in range(listed.option_count)]
    return "\n".join(parts)


def test_first_run_without_a_model_opens_the_setup_screen_lists_the_server_and_reaches_a_conversation(first_run, ws):
    server = first_run
    app = build_app(["--new"])

    async def scenario(pilot):
        await until(pilot, lambda: isinstance(app.screen, ModelSetup), timeout=3, what="the setup screen")
        await until(pilot, lambda: "replay-model" in screen_text(app), timeout=3, what="the server in the list")
        shown = screen_text(app)
        assert "No model is configured" in shown
        listed = shown.split("model servers running on this machine")[1]
        assert listed.index(f"replay-model  (vLLM at {server.url})") < listed.index("providers with a key")
        assert "none (OPENAI_API_KEY, … are unset)" in shown
        assert "embedded  (demo: a 270M base model; it shows the machinery, it does not solve tasks)" in shown
        await pilot.press("enter")  # the first server is highlighted
        await until(pilot, lambda: "this workspace" in screen_text(app), what="where to save")
        assert "Save openai/replay-model as the model for" in screen_text(app)
        await pilot.press("enter")  # this workspace
        await until(pilot, lambda: app.model is not None, timeout=60, what="the connection (litellm loads)")
        assert not isinstance(app.screen, ModelSetup)
        assert f"model openai/replay-model, saved to {ws / 'agent.toml'}" in notes(app)[-1]
        app.query_one("#prompt").value = "make mean() safe for empty lists"
        await pilot.press("enter")
        assert "working" in str(app.query_one(StatusBar).render())  # at once, before any reply arrives
        await until(pilot, lambda: "Apply this edit to stats.py?" in screen_text(app), what="the edit to approve")
        # the question and the diff are separate widgets: on a loaded machine the diff can render a frame later
        await until(pilot, lambda: "+     return total(items) / max(" in screen_text(app), what="the edit's diff")
        assert isinstance(app.screen, EditApproval)
        await pilot.press("y")
        await until(pilot, lambda: not app.running, timeout=60, what=f"the run to end: {notes(app)}")
        assert notes(app)[-1] == "● done: Fixed." and (ws / "stats.py").read_text() == FIXED
        assert "working" not in str(app.query_one(StatusBar).render())
        await pilot.press("ctrl+q")

    drive(app, scenario)
    assert (ws / "agent.toml").read_text() == f'model = "openai/replay-model"\napi_base = "{server.url}"\n'
    assert load_settings({}, ws).model == "openai/replay-model"  # the next start needs no setup
    assert server.requests[0]["messages"][-1]["content"].endswith("make mean() safe for empty lists")


def test_the_demo_model_opens_the_setup_screen_saying_why(first_run):
    app = build_app(["--new", "--model", "embedded"])

    async def scenario(pilot):
        await until(pilot, lambda: isinstance(app.screen, ModelSetup), timeout=3, what="the setup screen")
        assert "the embedded model is a demo" in screen_text(app) and app.model is None

    drive(app, scenario)


def test_closing_the_setup_screen_at_once_leaves_a_working_app_that_says_how_to_choose(first_run, monkeypatch):
    silent = socket.socket()  # accepts, never answers: the probes take their whole timeout
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setattr(detect, "KNOWN_PORTS", (("vLLM", silent.getsockname()[1]),))
    app = build_app(["--new"])

    async def scenario(pilot):
        await until(pilot, lambda: isinstance(app.screen, ModelSetup), timeout=3, what="the setup screen")
        await pilot.press("escape")  # before the probes answer
        await until(pilot, lambda: notes(app)[1:], what="the note")
        await pilot.pause(1)  # the probes answer into a closed screen
        assert notes(app)[-1] == "no model chosen: type /model to choose one"
        assert "no model: /model chooses one" in str(app.query_one(StatusBar).render())

    with silent:
        drive(app, scenario)


def test_slash_model_switches_to_another_server_and_saves_it_for_every_workspace(first_run, ws, tmp_path):
    (ws / "agent.toml").write_text('model = "openai/old"\napi_base = "http://127.0.0.1:9/v1"\nmax_steps = 5\n')
    app = build_app(["--new"])

    async def scenario(pilot):
        await until(pilot, lambda: notes(app)[1:], what="the old server to fail")
        app.query_one("#prompt").value = "/model"
        await pilot.press("enter")
        await until(pilot, lambda: "replay-model" in screen_text(app), what="the setup screen's list")
        assert "The model now: openai/old" in screen_text(app)
        await pilot.press("enter", "down", "enter")  # the server, then every workspace
        await until(pilot, lambda: app.model is not None, what="the new connection")
        assert app.model.name == "openai/replay-model" and app.settings.api_base == first_run.url

    drive(app, scenario)
    user_config = tmp_path / "config" / "retain" / "agent.toml"
    assert user_config.read_text() == f'model = "openai/replay-model"\napi_base = "{first_run.url}"\n'
    assert "max_steps = 5" in (ws / "agent.toml").read_text()  # the workspace file is left alone


def test_an_unreachable_server_is_reported_in_the_app_with_the_fix(ws):
    url = f"http://127.0.0.1:{free_port()}/v1"

    async def scenario(pilot):
        app = pilot.app
        await until(pilot, lambda: len(notes(app)) == 2, what="the connection failure")
        assert notes(app)[-1].startswith(f"✗ model server unreachable at {url}")
        assert "/model in the app lists the servers running here" in notes(app)[-1]
        assert "openai/replay-model: not connected" in str(app.query_one(StatusBar).render())

    drive(make_app(ws, url), scenario)


def test_a_server_dying_mid_reply_keeps_the_conversation_and_ctrl_r_tries_again(ws):
    turns = [Turn("Reading it now, then I will " * 4, cut_after=3), Turn("```done\nNothing to change.\n```")]
    with ReplayServer(turns) as server:

        async def scenario(pilot):
            app = pilot.app
            assert not app.check_action("retry", ())  # nothing failed yet: not offered
            await send(pilot, "make mean() safe for empty lists")
            await until(pilot, lambda: not app.running and notes(app)[-1].startswith("✗"), what="the failure")
            assert "stopped in the middle of a reply" in notes(app)[-1] and "ctrl+r tries again" in notes(app)[-1]
            assert app.check_action("retry", ())
            await pilot.press("ctrl+r")
            await until(pilot, lambda: notes(app)[-1] == "● done: Nothing to change.", what="the retried run")
            assert "↻ trying again" in notes(app)
            again = server.requests[1]["messages"]
            assert again == server.requests[0]["messages"]  # the same conversation, asked again
            assert not app.check_action("retry", ())

        drive(make_app(ws, server.url), scenario)
