"""The vLLM launcher: command lines per Gemma 4 size, version check, and the serve lifecycle."""

import json
import shlex
import signal
import subprocess
import sys
import textwrap

import pytest

from agent.embedded import free_port
from decoding import vllm_launch
from decoding.vllm_launch import GEMMA4_SIZES, LaunchError, build_command, gemma_size, main, serve


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
    assert _spec(command) == {"num_speculative_tokens": 8, "prompt_lookup_min": 2, "prompt_lookup_max": 4}
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
    assert main(["--model", "google/gemma-4-E4B-it", "--print-command", "--", "--gpu-memory-utilization", "0.8"]) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed[-2:] == ["--gpu-memory-utilization", "0.8"] and _spec(printed)["model"].endswith("E4B-it-assistant")


def test_unsupported_or_missing_vllm_is_a_clear_error(monkeypatch):
    def version_of(installed: str | None):
        def version(name):
            if installed is None or name != "vllm":
                raise vllm_launch.metadata.PackageNotFoundError(name)
            return installed
        return version

    monkeypatch.setattr(vllm_launch.metadata, "version", version_of(None))
    with pytest.raises(LaunchError, match="not installed"):
        vllm_launch.installed_vllm_version()
    monkeypatch.setattr(vllm_launch.metadata, "version", version_of("0.11.2"))
    with pytest.raises(LaunchError, match="not supported"):
        vllm_launch.installed_vllm_version()
    monkeypatch.setattr(vllm_launch.metadata, "version", version_of("0.32.1"))
    assert vllm_launch.installed_vllm_version() == "0.32.1"


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
        [sys.executable, "-c", "import sys; from decoding.vllm_launch import serve; "
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
