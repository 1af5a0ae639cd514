"""What the setup screen and `agent run` find on this machine, and how a choice is saved."""

import socket
import threading

from replay import ReplayServer

from agent import detect
from agent.config import load_settings, save_model
from agent.detect import all_choices, find_servers, found_lines, provider_keys
from decoding.serving.launch import free_port


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_servers_are_found_in_port_order_and_silent_ports_cost_one_short_timeout_together(monkeypatch):
    hanging = [socket.socket() for _ in range(8)]  # accept connections, never answer: 4 s if probed one by one
    for sock in hanging:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
    try:
        with ReplayServer([], model="qwen") as first, ReplayServer([], model="gemma") as second:
            ports = (
                ("vLLM", port_of(second.url)),
                *(("silent", sock.getsockname()[1]) for sock in hanging),
                ("nothing", free_port()),
                ("Ollama", port_of(first.url)),
            )
            # every probe waits here until all are in flight: probed one by one, the first would wait in vain
            together, probe = threading.Barrier(len(ports), timeout=120), detect._probe

            def probe_when_all_are_in_flight(port: int, timeout: float) -> list[str]:
                together.wait()
                return probe(port, timeout)

            monkeypatch.setattr(detect, "_probe", probe_when_all_are_in_flight)
            found = find_servers(ports, timeout=0.5)
    finally:
        for sock in hanging:
            sock.close()
    assert [(c.model, c.api_base) for c in found] == [("openai/gemma", second.url), ("openai/qwen", first.url)]
    assert found[0].label == f"gemma  (vLLM at {second.url})"


def test_provider_keys_are_named_by_variable_never_by_value():
    (choice,) = provider_keys({"OPENAI_API_KEY": "sk-very-secret", "UNRELATED": "x"})
    assert choice.model == "openai/gpt-4.1" and choice.api_base is None
    assert "$OPENAI_API_KEY" in choice.label and "sk-very-secret" not in choice.label


def test_the_demo_is_listed_last_and_labelled_honestly(monkeypatch):
    monkeypatch.setattr("agent.detect.KNOWN_PORTS", (("vLLM", free_port()),))
    choices = all_choices({"ANTHROPIC_API_KEY": "k"})
    assert [c.model for c in choices] == ["anthropic/claude-sonnet-4-20250514", "embedded"]
    assert choices[-1].demo and "it shows the machinery, it does not solve tasks" in choices[-1].label
    assert found_lines(choices) == (
        "Found on this machine:\n"
        "  --model anthropic/claude-sonnet-4-20250514    # key in $ANTHROPIC_API_KEY"
    )


def test_a_saved_choice_replaces_the_model_and_keeps_the_other_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-user-config"))
    config = tmp_path / "agent.toml"
    config.write_text('# mine\nmodel = "old/model"\napi_base = "http://old"\nmax_steps = 7\n')
    save_model(config, "openai/qwen", "http://127.0.0.1:8000/v1")
    assert config.read_text() == 'model = "openai/qwen"\napi_base = "http://127.0.0.1:8000/v1"\n# mine\nmax_steps = 7\n'
    save_model(config, "embedded", None, allow_demo_model=True)
    settings = load_settings({}, tmp_path, {})
    assert (settings.model, settings.api_base, settings.allow_demo_model, settings.max_steps) == (
        "embedded",
        None,
        True,
        7,
    )
