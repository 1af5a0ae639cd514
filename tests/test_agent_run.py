"""`agent run` end to end: the loop drives litellm (streaming) against a replay server over real HTTP."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from replay import ReplayServer, Turn

from agent import detect
from agent.client import Model, ModelUnavailable
from agent.config import Settings
from agent.headless import StreamProgress, build_parser, main, run_command
from agent.loop import Agent, Hooks, RunState, first_messages
from agent.transcript import Redactor, Transcript
from decoding.serving import launch as embedded
from decoding.serving.launch import free_port
from tools.ot import OTError
from tools.ot_script import parse_script
from tools.workspace import Workspace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # litellm on newer pydantic

STATS = "def total(items):\n    return sum(items)\n\n\ndef mean(items):\n    return total(items) / len(items)\n"
FIX_MEAN = 'retain("return total(items) / ")\ndelete("len(items)")\ninsert("max(len(items), 1)")'
SPECULATION = {"method": "ngram", "drafted": 12, "accepted": 9, "mean_accepted_length": 2.5}


def words(text: str) -> int:
    """Whitespace-separated words stand in for a tokenizer here; the figures only need to be consistent."""
    return len(text.split())


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "stats.py").write_text(STATS)
    (root / "README.md").write_text("# Stats\n")
    (tmp_path / "task.md").write_text("Make mean() safe for empty lists and say so in the README.\n")
    return root


def run(ws, capsys, server_url, *flags, counter=None):
    """Run `agent run` as the command line would; returns (exit code, stdout, stderr, report)."""
    report = ws.parent / "report.json"
    argv = [str(ws.parent / "task.md"), "--workspace", str(ws), "--json", str(report)]
    if server_url:
        argv += ["--model", "openai/replay-model", "--api-base", server_url]
    code = run_command(build_parser().parse_args(argv + list(flags)), count_tokens=counter)
    out, err = capsys.readouterr()
    return code, out, err, json.loads(report.read_text())


def observation(request: dict) -> str:
    """What the model was told last in this request."""
    return request["messages"][-1]["content"]


def test_a_task_completed_with_two_edits(ws, capsys):
    turns = [
        Turn("Let me read it.\n```read stats.py```"),
        Turn(f"```edit stats.py\n{FIX_MEAN}\n```", completion_tokens=31, usage_extra={"speculation": SPECULATION}),
        Turn('```edit README.md\nretain("# Stats\\n")\ninsert("\\nmean() of no items is 0.\\n")\n```'),
        Turn(
            "```done\nmean() no longer divides by zero; README says so.\n```", usage_extra={"speculation": SPECULATION}
        ),
    ]
    with ReplayServer(turns) as server:
        code, out, err, report = run(ws, capsys, server.url, counter=words)
    assert code == 0 and out.startswith("done: mean() no longer divides by zero")
    assert (ws / "stats.py").read_text() == STATS.replace("/ len(items)", "/ max(len(items), 1)")
    assert (ws / "README.md").read_text() == "# Stats\n\nmean() of no items is 0.\n"

    first, edit_turn, readme_turn, _ = server.requests
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    assert first["max_tokens"] == 2048  # the default cap of one reply
    assert "prediction" not in first
    assert edit_turn["prediction"] == {"type": "content", "content": STATS}  # the file read last
    assert readme_turn["prediction"]["content"] == (ws / "stats.py").read_text()  # the file edited last
    assert "applied to stats.py" in observation(readme_turn)

    assert report["status"] == "done" and report["exit_code"] == 0 and report["steps"] == 4
    assert [(c["tool"], c["status"]) for c in report["tool_calls"]] == [("read", "ok"), ("edit", "ok"), ("edit", "ok")]
    stats_edit, readme_edit = report["edits"]
    assert stats_edit["file"] == "stats.py" and stats_edit["script"] == FIX_MEAN + "\n"
    assert stats_edit["corrections"][0]["kind"] == "anchor" and stats_edit["turn_output_tokens"] == 31
    assert stats_edit["output_tokens"] == words(FIX_MEAN)
    assert stats_edit["whole_file_tokens"] == words((ws / "stats.py").read_text())
    assert stats_edit["tokens_saved"] == stats_edit["whole_file_tokens"] - stats_edit["output_tokens"]
    assert report["tokens_saved"] == stats_edit["tokens_saved"] + readme_edit["tokens_saved"]
    assert report["usage"]["prompt_tokens"] == 400 and report["usage"]["completion_tokens"] == 31 + 3 * 20
    assert report["usage"]["speculation"] == {"method": "ngram", "drafted": 24, "accepted": 18}
    assert report["wall_time_s"] > 0

    assert [line for line in err.splitlines() if line.startswith("step ")] == [
        "step 1: read stats.py ok (20 tokens out)",
        "step 2: edit stats.py ok (31 tokens out)",
        "step 3: edit README.md ok (20 tokens out)",
        "step 4: done ok (20 tokens out)",
    ]
    events = [json.loads(line) for line in Path(report["transcript"]).read_text().splitlines()]
    assert events[0]["type"] == "start" and events[-1] == {**events[-1], "type": "end", "status": "done"}
    assert [e["type"] for e in events].count("turn") == 4


def test_a_malformed_edit_is_corrected_after_the_refusal_reaches_the_model(ws, capsys):
    malformed = 'retain("return total(items) / "\ndelete("len(items)")'
    with pytest.raises(OTError) as refusal:
        parse_script(malformed)
    turns = [
        Turn(f"```edit stats.py\n{malformed}\n```"),
        Turn(f"I missed a parenthesis.\n```edit stats.py\n{FIX_MEAN}\n```"),
        Turn("```done\nFixed.\n```"),
    ]
    with ReplayServer(turns) as server:
        code, _out, _, report = run(ws, capsys, server.url)
    told = observation(server.requests[1])
    assert told.startswith("[edit stats.py: error]\n" + str(refusal.value))
    assert "The file is unchanged." in told
    assert code == 0 and "max(len(items), 1)" in (ws / "stats.py").read_text()
    assert [e["status"] for e in report["edits"]] == ["error", "ok"]
    assert report["tokens_saved"] is None and "no tokenizer" in report["tokens_saved_note"]


def test_paths_outside_the_workspace_are_refused(ws, capsys):
    outside = ws.parent / "secret.txt"
    outside.write_text("TOP SECRET\n")
    os.symlink(outside, ws / "link.txt")
    turns = [
        Turn('```read ../secret.txt```\n```edit link.txt\ndelete("TOP")\n```'),
        Turn("```failed\nThe file I need is outside the workspace.\n```"),
    ]
    with ReplayServer(turns) as server:
        code, out, _, report = run(ws, capsys, server.url)
    told = observation(server.requests[1])
    assert told.count("outside the workspace") == 2 and "TOP SECRET" not in told
    assert outside.read_text() == "TOP SECRET\n"
    assert code == 1 and out.startswith("failed: the model gave up: The file I need is outside")
    assert [c["status"] for c in report["tool_calls"]] == ["refused", "refused"]


def test_a_budget_runs_out_and_the_run_resumes_from_its_transcript(ws, capsys):
    with ReplayServer([Turn("```read stats.py```"), Turn("```read README.md```")]) as server:
        code, out, _, report = run(ws, capsys, server.url, "--max-steps", "2")
    assert code == 3 and report["status"] == "budget" and "step budget ran out (2 model turns)" in report["reason"]
    run_id = report["run_id"]
    assert f"agent run --resume {run_id}" in out

    with ReplayServer([Turn("```read stats.py```"), Turn("```done\nNothing to change.\n```")]) as server:
        argv = ["--resume", run_id, "--json", str(ws.parent / "report.json"), "--api-base", server.url]
        code = run_command(build_parser().parse_args(argv))
    resumed = json.loads((ws.parent / "report.json").read_text())
    roles = [m["role"] for m in server.requests[0]["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert server.requests[0]["messages"][-1]["content"].startswith("[read README.md: ok]")
    assert observation(server.requests[1]).startswith("[read stats.py: ok]")  # in the run's workspace
    assert code == 0 and resumed["steps"] == 4 and len(resumed["tool_calls"]) == 3
    assert resumed["run_id"] == run_id and resumed["transcript"] == report["transcript"]
    assert resumed["model"] == "openai/replay-model"  # the model and the workspace come from the transcript

    again = build_parser().parse_args(["--resume", run_id, "--workspace", str(ws)])
    assert run_command(again) == 2  # a finished run is not resumed


def test_the_server_down_exits_4_with_the_url_and_the_fix(ws, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, out, _, report = run(ws, capsys, url)
    assert code == 4 and report["status"] == "unavailable"
    assert f"model server unreachable at {url}" in out and "fix: start the model server" in out
    assert "--api-base" in report["reason"]


def test_a_connection_failure_during_a_turn_is_classified_as_unavailable():
    model = Model("openai/replay-model", f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ModelUnavailable, match=r"unreachable at http://127\.0\.0\.1"):
        model.complete([{"role": "user", "content": "hi"}], timeout=1)  # retried within its time, then given up


def test_no_model_configured_exits_4_naming_the_servers_found_running(ws, capsys, monkeypatch):
    monkeypatch.delenv("RETAIN_MODEL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(ws.parent / "config"))
    with ReplayServer([]) as server:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        monkeypatch.setattr(detect, "KNOWN_PORTS", (("vLLM", free_port()), ("Ollama", port)))
        code, _, err, report = run(ws, capsys, None)
    assert code == 4 and report["status"] == "misconfigured"
    assert "no model is configured" in err and "RETAIN_MODEL" in err and "ollama pull" in err
    assert f"--model openai/replay-model --api-base {server.url}    # Ollama at {server.url}" in err


def test_usage_errors_exit_2(ws, capsys):
    assert run_command(build_parser().parse_args([str(ws / "missing.md"), "--model", "m"])) == 2
    assert run_command(build_parser().parse_args(["--model", "m"])) == 2
    assert run_command(build_parser().parse_args(["--resume", "nosuchrun", "--model", "m"])) == 2
    assert "no transcript for run nosuchrun" in capsys.readouterr().err


def test_native_tool_calls(ws, capsys):
    turns = [
        Turn(tool_calls=[("read", {"path": "stats.py"})]),
        Turn(tool_calls=[("edit", {"path": "stats.py", "script": FIX_MEAN})]),
        Turn(tool_calls=[("done", {"summary": "Fixed."})]),
    ]
    with ReplayServer(turns) as server:
        code, _, _, report = run(ws, capsys, server.url, "--tools", "native")
    assert code == 0 and "max(len(items), 1)" in (ws / "stats.py").read_text()
    assert [t["function"]["name"] for t in server.requests[0]["tools"]][:3] == ["read", "edit", "create"]
    answer = server.requests[1]["messages"][-1]
    assert answer["role"] == "tool" and answer["tool_call_id"] == "call_0"
    assert answer["content"].startswith("stats.py: 6 lines")
    assert server.requests[1]["messages"][-2]["tool_calls"][0]["function"]["name"] == "read"
    assert all("prediction" not in r for r in server.requests)  # Predicted Outputs do not combine with tools
    assert [e["status"] for e in report["edits"]] == ["ok"]


@pytest.mark.parametrize(("mode", "expected"), [("never", "disabled in this run"), ("ask", "nobody is at a terminal")])
def test_shell_commands_need_permission(ws, capsys, mode, expected):
    turns = [Turn("```shell\ntouch ran.txt\n```"), Turn("```done\nok\n```")]
    with ReplayServer(turns) as server:
        code, _, _, report = run(ws, capsys, server.url, "--shell", mode)
    assert expected in observation(server.requests[1]) and not (ws / "ran.txt").exists()
    assert report["tool_calls"][0]["status"] == "refused"
    assert code == 0  # done is accepted: a refused command is not a failed edit


def test_secrets_are_not_echoed_to_the_model_the_transcript_or_the_report(ws, capsys, monkeypatch):
    monkeypatch.setenv("RETAIN_TEST_TOKEN", "s3cr3t-value-xyz")
    turns = [Turn("```shell\necho token=$RETAIN_TEST_TOKEN\n```"), Turn("```done\nok\n```")]
    with ReplayServer(turns) as server:
        code, _, _, report = run(ws, capsys, server.url, "--shell", "auto")
    told = observation(server.requests[1])
    assert "token=[redacted $RETAIN_TEST_TOKEN]" in told and "s3cr3t" not in told
    assert "s3cr3t" not in Path(report["transcript"]).read_text() and "s3cr3t" not in json.dumps(report)
    assert code == 0


def test_approve_never_shows_the_edit_but_does_not_apply_it(ws, capsys):
    turns = [Turn(f"```edit stats.py\n{FIX_MEAN}\n```"), Turn("```done\nFixed.\n```")]
    with ReplayServer(turns) as server:
        code, out, _, _report = run(ws, capsys, server.url, "--approve", "never")
    told = observation(server.requests[1])
    assert "not applied" in told and "+    return total(items) / max(len(items), 1)" in told
    assert (ws / "stats.py").read_text() == STATS
    assert code == 1 and "not applied (--approve never)" in out


def test_done_is_not_accepted_while_an_edit_is_left_refused(ws, capsys):
    turns = [Turn('```edit stats.py\ndelete("no such text")\n```\n```done\nFixed.\n```'), Turn("```done\nReally.\n```")]
    with ReplayServer(turns) as server:
        code, _, _, report = run(ws, capsys, server.url, "--max-steps", "2")
    assert "not accepted: an action in the same reply did not succeed" in observation(server.requests[1])
    assert code == 3 and report["status"] == "budget"
    events = [json.loads(line) for line in Path(report["transcript"]).read_text().splitlines()]
    last_observation = [e for e in events if e["type"] == "message"][-1]["message"]["content"]
    assert "not accepted: the last edit of stats.py did not apply" in last_observation


def test_a_reply_without_a_tool_block_is_answered_with_the_protocol(ws, capsys):
    turns = [Turn("I think the bug is in mean()."), Turn("```done\nok\n```")]
    with ReplayServer(turns) as server:
        code, _, _, _ = run(ws, capsys, server.url)
    assert "no tool block" in observation(server.requests[1]) and code == 0


def test_model_embedded_starts_the_server_uses_it_and_stops_it(ws, capsys, monkeypatch):
    turns = [
        {"text": "```read stats.py```"},
        {"text": f"```edit stats.py\n{FIX_MEAN}\n```", "usage_extra": {"speculation": SPECULATION}},
        {"text": "```done\nFixed.\n```"},
    ]
    (ws.parent / "turns.json").write_text(json.dumps(turns))
    stand_in = Path(__file__).parent / "stand_in_server.py"
    command = (sys.executable, str(stand_in), "--host", "127.0.0.1", "--port", "{port}")
    monkeypatch.setattr(embedded, "SERVER_COMMAND", (*command, "--turns", str(ws.parent / "turns.json")))
    code, _, err, report = run(ws, capsys, None, "--model", "embedded", "--allow-demo-model")
    assert code == 0 and report["model"] == "openai/stand-in"
    assert report["usage"]["speculation"]["accepted"] == 9
    url = re.search(r"embedded server ready at (\S+)", err)[1]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/models", timeout=2)


def test_the_token_budget_counts_prompt_and_completion_tokens(ws, capsys):
    turns = [Turn("```read stats.py```"), Turn("```read README.md```"), Turn("```done\nok\n```")]
    with ReplayServer(turns) as server:
        code, _, _, report = run(ws, capsys, server.url, "--max-tokens", "150")
    assert code == 3 and [r["max_tokens"] for r in server.requests] == [150, 30]
    assert "token budget ran out (240 of 150 tokens used)" in report["reason"]


def _start_agent_process(ws, turns):
    """`agent run --model embedded` in a child process, once its stand-in server is ready: (process, url)."""
    (ws.parent / "turns.json").write_text(json.dumps(turns))
    helper = Path(__file__).parent / "run_with_stand_in.py"
    argv = [sys.executable, str(helper), str(ws.parent / "turns.json"), str(ws.parent / "task.md")]
    argv += ["--workspace", str(ws), "--json", str(ws.parent / "report.json")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stderr:
        if match := re.search(r"embedded server ready at (\S+)", line):
            return process, match[1]
    raise AssertionError(f"the agent exited ({process.wait()}) before its server was ready")


def _refuses_connections(url: str) -> bool:
    """Whether nothing answers at `url` any more, waiting a while for a dying process to let go of its port."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).close()
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_sigterm_mid_turn_stops_the_embedded_server_and_records_the_interruption(ws):
    process, url = _start_agent_process(ws, [{"text": "```done\nok\n```", "delay": 60}])
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 1 and out.startswith("failed: interrupted\nrun ")
    assert _refuses_connections(url)
    report = json.loads((ws.parent / "report.json").read_text())
    events = [json.loads(line) for line in Path(report["transcript"]).read_text().splitlines()]
    assert events[-1]["type"] == "end" and events[-1]["reason"].startswith("interrupted")


def test_a_killed_agent_does_not_leave_the_embedded_server_running(ws):
    process, url = _start_agent_process(ws, [{"text": "```done\nok\n```", "delay": 60}])
    process.kill()
    process.wait()
    assert _refuses_connections(url)


def test_resuming_after_a_crash_mid_turn_does_not_replay_its_actions(ws, capsys, tmp_path):
    transcript = tmp_path / "crashed.jsonl"
    events = [
        {"type": "start", "run_id": "crashed", "task": "Fix mean().", "model": "openai/replay-model"},
        {"type": "message", "message": {"role": "system", "content": "…"}},
        {"type": "message", "message": {"role": "user", "content": "Fix mean()."}},
        {"type": "message", "message": {"role": "assistant", "content": f"```edit stats.py\n{FIX_MEAN}\n```"}},
    ]
    transcript.write_text("".join(json.dumps(e) + "\n" for e in events))
    with ReplayServer([Turn("```done\nok\n```")]) as server:
        argv = ["--resume", "crashed", "--transcript", str(transcript), "--workspace", str(ws)]  # not recorded
        code = run_command(build_parser().parse_args([*argv, "--api-base", server.url]))
    assert observation(server.requests[0]).startswith("The run was interrupted before the results")
    assert (ws / "stats.py").read_text() == STATS  # the unconfirmed edit was not applied behind the model's back
    assert code == 0


def test_json_to_stdout_leaves_stdout_to_the_report_alone(ws, capsys):
    with ReplayServer([Turn("```done\nok\n```")]) as server:
        argv = [str(ws.parent / "task.md"), "--workspace", str(ws), "--json", "-"]
        code = run_command(build_parser().parse_args([*argv, "--model", "openai/m", "--api-base", server.url]))
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["status"] == "done" and "step 1: done ok" in err


def test_shell_ask_runs_only_what_the_user_approves(ws, tmp_path):
    asked = []

    def confirm(command: str) -> bool:
        asked.append(command)
        return command.startswith("touch approved")

    turns = [Turn("```shell\ntouch approved.txt\n```\n```shell\ntouch declined.txt\n```"), Turn("```done\nok\n```")]
    with ReplayServer(turns) as server:
        agent = Agent(
            Model("openai/replay-model", server.url),
            Workspace(ws),
            Transcript(tmp_path / "t.jsonl", Redactor({})),
            Settings(max_steps=3, shell="ask"),
            Hooks(approve_command=confirm),
        )
        outcome = agent.run(RunState("r1", "task", first_messages("task", Workspace(ws))))
    assert outcome.status == "done" and asked == ["touch approved.txt\n", "touch declined.txt\n"]
    assert (ws / "approved.txt").exists() and not (ws / "declined.txt").exists()
    assert "the user declined to run this command" in observation(server.requests[1])


@pytest.mark.parametrize(
    ("name", "takes"),
    [("openai/replay-model", True), ("hosted_vllm/google/gemma-4-26B-A4B-it", True), ("anthropic/claude", False)],
)
def test_prediction_is_sent_only_to_providers_that_take_it(name, takes):
    assert Model(name, "http://127.0.0.1:1/v1").takes_prediction is takes


def test_a_local_server_is_asked_to_ground_edits_in_the_predicted_file(ws, capsys, monkeypatch):
    turns = [Turn("```read stats.py```"), Turn(f"```edit stats.py\n{FIX_MEAN}\n```"), Turn("```done\nfixed\n```")]
    with ReplayServer(turns, model="gemma") as server:
        code, *_ = run(ws, capsys, None, "--model", "hosted_vllm/gemma", "--api-base", server.url, counter=words)
    assert code == 0
    first, edit_turn, _ = server.requests
    assert "grounding" not in first  # no file yet: nothing to ground in
    assert edit_turn["grounding"] == {"mode": "edit", "path": "stats.py"}
    assert edit_turn["prediction"] == {"type": "content", "content": STATS}
    assert edit_turn["vllm_xargs"] == {"prediction": STATS, "grounding": "edit", "grounding_path": "stats.py"}
    assert "vllm_xargs" not in first


def test_a_reply_cut_off_at_the_output_limit_is_not_applied_and_the_model_is_told(ws, capsys):
    cut = Turn('```edit stats.py\nretain("return total(items) / ")\ndelete("len(items)")\nins', finish_reason="length")
    with ReplayServer([cut, Turn("```done\nok\n```")]) as server:
        code, _, _, _report = run(ws, capsys, server.url)
    told = observation(server.requests[1])
    assert told.startswith("Your reply was cut off at the output token limit") and "is not closed" in told
    assert (ws / "stats.py").read_text() == STATS and code == 0


def test_the_time_budget_ends_a_turn_that_does_not_finish(ws, capsys):
    with ReplayServer([Turn("```done\nok\n```", delay=10)]) as server:
        code, out, _, report = run(ws, capsys, server.url, "--timeout", "1")
    assert code == 3 and report["status"] == "budget"
    assert out.startswith("budget: wall time ran out during a model turn")


@pytest.mark.slow
def test_agent_run_against_the_real_embedded_server(ws, tmp_path, embedded_model):
    """The plumbing end to end: the embedded server starts, streams, reports usage and speculation stats,
    and stops. The 270M base model is not expected to solve the task: the token budget ends the run."""
    report = tmp_path / "embedded.json"
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "run", str(ws.parent / "task.md"), "--workspace", str(ws),
         "--model", "embedded", "--allow-demo-model", "--max-tokens", "64", "--timeout", "0", "--json", str(report)],
        capture_output=True, text=True, timeout=600, env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 3, result.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["status"] == "budget" and data["model"].startswith("openai/")
    assert 0 < data["usage"]["completion_tokens"] <= 64
    assert data["usage"]["speculation"]["method"]


def test_replies_without_an_action_three_times_in_a_row_end_the_run_with_exit_1(ws, capsys):
    turns = [Turn("Hmm."), Turn("```read stats.py```"), Turn("Well."), Turn("So."), Turn("Thus."), Turn("unused")]
    with ReplayServer(turns) as server:
        code, out, err, report = run(ws, capsys, server.url)
    assert code == 1 and report["status"] == "failed" and len(server.requests) == 5  # the read reset the count
    assert report["reason"].startswith("the model wrote 3 replies in a row without an action")
    assert out.startswith("failed: the model wrote 3 replies") and "step 5: no action" in err
    assert "agent run --help lists ways to get one" in report["reason"]
    assert "Get a real model in one of these ways" in build_parser().format_help()  # as the reason says


def test_the_output_cap_of_a_reply_is_configurable(ws, capsys):
    (ws / "agent.toml").write_text("turn_tokens = 300\n")
    turns = [Turn("```read stats.py```"), Turn("```done\nok\n```")] * 2
    with ReplayServer(turns) as server:
        run(ws, capsys, server.url)
        run(ws, capsys, server.url, "--turn-tokens", "50")
    assert [r["max_tokens"] for r in server.requests] == [300, 300, 50, 50]


def test_timeout_is_wall_clock_a_stream_still_going_at_the_deadline_is_closed(ws, capsys):
    steady = Turn("word " * 2000, chunk_delay=0.01)  # ~20 s of a model writing steadily: no read ever waits
    with ReplayServer([steady]) as server:
        code, _, _, report = run(ws, capsys, server.url, "--timeout", "2")
    assert code == 3 and report["status"] == "budget" and "stream closed" in report["reason"]
    deadline = time.monotonic() + 5
    while server.dropped == 0 and time.monotonic() < deadline:  # the server notices the closed stream
        time.sleep(0.05)
    assert server.dropped == 1


def test_the_default_timeout_applies_and_zero_means_none(ws):
    from agent.config import Settings, run_timeout

    assert run_timeout(Settings(model="openai/m")) == 600
    assert run_timeout(Settings(model="openai/m", timeout=0)) is None
    assert run_timeout(Settings(model="openai/m", timeout=30)) == 30
    assert run_timeout(Settings(model="embedded", allow_demo_model=True)) == 90


def test_the_embedded_model_is_refused_without_allow_demo_model_saying_what_to_use(ws, capsys, monkeypatch):
    monkeypatch.setattr(embedded, "SERVER_COMMAND", ("false",))  # must never start
    code, _, err, report = run(ws, capsys, None, "--model", "embedded")
    assert code == 4 and report["status"] == "misconfigured"
    assert "a 270M base model; it shows the machinery, it does not solve tasks" in err
    assert "vllm" in err and "ollama pull" in err and "OPENAI_API_KEY" in err and "--allow-demo-model" in err


def test_the_demo_model_runs_with_small_budgets_when_allowed(ws, capsys, monkeypatch):
    (ws.parent / "turns.json").write_text(json.dumps([{"text": "I am a base model."}] * 3))
    stand_in = Path(__file__).parent / "stand_in_server.py"
    command = (sys.executable, str(stand_in), "--host", "127.0.0.1", "--port", "{port}")
    monkeypatch.setattr(embedded, "SERVER_COMMAND", (*command, "--turns", str(ws.parent / "turns.json")))
    code, _, _, report = run(ws, capsys, None, "--model", "embedded", "--allow-demo-model")
    assert code == 1 and "3 replies in a row without an action" in report["reason"]
    assert report["usage"]["completion_tokens"] == 60  # three turns, then the stop


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["MISSING.md"], "cannot read the task MISSING.md"),
        (["--timeout", "soon"], "argument --timeout: invalid float value: 'soon'"),
        (["--resume", "nosuchrun"], "no transcript for run nosuchrun"),
    ],
    ids=["missing-task", "bad-option", "unknown-run"],
)
def test_json_reports_usage_errors_too(argv, reason, capsys):
    assert main([*argv, "--model", "openai/m", "--json", "-"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "usage" and report["exit_code"] == 2 and report["reason"].startswith(reason)


class FakeStderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [False, True])
def test_a_streaming_reply_shows_its_progress_every_two_seconds(tty):
    now = [0.0]
    stream = FakeStderr(tty)
    meter = StreamProgress(stream, every=2.0, clock=lambda: now[0])
    for _ in range(10):  # 20 characters (~5 tokens) every half second for 5 s
        meter.text("x" * 20)
        now[0] += 0.5
    meter.line("step 1: no action (50 tokens out)")
    shown = stream.getvalue()
    lines = ["model writing: ~25 tokens, 12.5 tok/s (2 s)", "model writing: ~45 tokens, 11.2 tok/s (4 s)"]
    if tty:  # one line, rewritten in place, then cleared for the step's line
        assert shown == "".join(f"\r\033[K{line}" for line in lines) + "\r\033[Kstep 1: no action (50 tokens out)\n"
    else:
        assert shown == "".join(f"{line}\n" for line in [*lines, "step 1: no action (50 tokens out)"])
