"""Settings precedence, the embedded server launcher, and the transcript's redaction."""

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent.config import ConfigError, load_settings, require_model
from agent.transcript import Redactor, Transcript, read_events
from decoding.serving.launch import EmbeddedServer, EmbeddedServerError

STAND_IN = Path(__file__).parent / "stand_in_server.py"


@pytest.fixture
def user_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = tmp_path / "config" / "retain" / "agent.toml"
    path.parent.mkdir(parents=True)
    return path


def test_command_line_beats_environment_beats_workspace_beats_user_config(tmp_path, user_config):
    user_config.write_text('model = "user/model"\napi_base = "http://user"\nmax_steps = 7\nshell = "never"\n')
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "agent.toml").write_text('model = "workspace/model"\napi_base = "http://workspace"\n')
    env = {"RETAIN_MODEL": "env/model"}
    settings = load_settings({"model": None, "shell": "auto"}, workspace, env)
    assert (settings.model, settings.api_base, settings.max_steps, settings.shell) == (
        "env/model",
        "http://workspace",
        7,
        "auto",
    )
    assert load_settings({"model": "cli/model"}, workspace, env).model == "cli/model"


def test_no_model_says_how_to_configure_one(tmp_path, user_config):
    settings = load_settings({}, tmp_path, {})
    with pytest.raises(ConfigError) as error:
        require_model(settings)
    message = str(error.value)
    assert "--model" in message and "RETAIN_MODEL" in message and "agent.toml" in message
    assert str(user_config) in message and "ollama pull" in message and "OPENAI_API_KEY" in message


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('modle = "x"', "unknown setting(s) modle"),
        ('api_key = "sk-123"', "keep keys out of files"),
        ('shell = "sometimes"', "shell must be one of never, ask, auto"),
        ("max_steps = -1", "max_steps must be a positive number"),
        ("timeout = -5", "timeout must be a number of seconds (0 for no limit), not -5"),
        ("allow_demo_model = 1", "allow_demo_model must be true or false"),
        ("model = [", "not valid TOML"),
    ],
)
def test_bad_settings_are_named(tmp_path, user_config, toml, expected):
    (tmp_path / "agent.toml").write_text(toml)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_settings({}, tmp_path, {})


def test_the_api_key_comes_from_the_named_variable(tmp_path, user_config, monkeypatch):
    (tmp_path / "agent.toml").write_text('model = "m"\napi_key_env = "MY_SERVER_KEY"\n')
    monkeypatch.setenv("MY_SERVER_KEY", "k-12345")
    assert load_settings({}, tmp_path, {}).api_key == "k-12345"


def test_embedded_server_starts_on_a_free_loopback_port_answers_and_stops():
    command = [sys.executable, str(STAND_IN), "--host", "127.0.0.1", "--port", "{port}"]
    with EmbeddedServer(command, startup_timeout=30) as server:
        assert server.api_base == f"http://127.0.0.1:{server.port}/v1"
        assert server.model_id == "stand-in"
        with urllib.request.urlopen(f"{server.api_base}/models", timeout=5) as response:
            assert json.load(response)["data"][0]["id"] == "stand-in"
        process = server._process
    assert process.poll() is not None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.api_base}/models", timeout=2)


def test_embedded_server_that_dies_is_reported_with_its_log():
    command = [sys.executable, "-c", "import sys; print('no weights here', file=sys.stderr); sys.exit(2)"]
    with pytest.raises(EmbeddedServerError, match="exited with code 2") as error:
        EmbeddedServer(command, startup_timeout=30).start()
    assert "no weights here" in str(error.value)


def test_secrets_from_the_environment_never_reach_the_transcript(tmp_path):
    redact = Redactor({"OPENAI_API_KEY": "sk-live-abcdef", "GH_TOKEN": "ghp_987654", "HOME": "/home/user", "PIN": "1"})
    transcript = Transcript(tmp_path / "t.jsonl", redact)
    transcript.write("message", message={"role": "user", "content": "key sk-live-abcdef and ghp_987654 at /home/user"})
    transcript.close()
    text = (tmp_path / "t.jsonl").read_text()
    assert "sk-live-abcdef" not in text and "ghp_987654" not in text
    (event,) = read_events(tmp_path / "t.jsonl")
    assert event["message"]["content"] == "key [redacted $OPENAI_API_KEY] and [redacted $GH_TOKEN] at /home/user"


def test_a_transcript_keeps_text_with_line_separators_inside_strings(tmp_path):
    transcript = Transcript(tmp_path / "t.jsonl", Redactor({}))
    content = 'page\x0cbreak and s = "a\u2028b\u2029c\x85d"'
    transcript.write("message", message={"role": "tool", "content": content})
    transcript.write("end")
    transcript.close()
    first, last = read_events(tmp_path / "t.jsonl")
    assert first["message"]["content"] == content and last["type"] == "end"


def test_a_transcript_cut_mid_line_is_still_read(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"type": "start"}\n{"type": "message", "mess')
    assert read_events(path) == [{"type": "start"}]
    path.write_text('{"type": "start"}\nnot json\n{"type": "end"}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:2"):
        read_events(path)
