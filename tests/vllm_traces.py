"""Draft/accept traces of vLLM's prompt-lookup speculation, and their replay with Retain's `ngram_lookup`.

A trace is one greedy completion from a vLLM server started with `--speculative-config` ngram and
`--per-request-spec-decode-metrics detailed`: the prompt and output token ids and, per verify step, how many
tokens vLLM drafted and how many it accepted. `python tests/vllm_traces.py URL OUT.json` records the fixture: a
copy-heavy prompt and free text.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable, Sequence

from decoding.drafting.base import ngram_lookup

Drafter = Callable[[list[int]], list[int]]


def complete(url: str, prompt: str, max_tokens: int, timeout: float = 600, **extra) -> dict:
    """A greedy /completions request that returns token ids (and speculation metrics when the server has them);
    `extra` fields go into the body as they are."""
    body = {"model": "gemma", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True,
            **extra}
    request = urllib.request.Request(
        f"{url}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def trace_of(response: dict, speculative_config: dict) -> dict:
    choice = response["choices"][0]
    spec = response["metrics"]["speculative_decoding"]
    return {
        "speculative_config": speculative_config,
        "prompt_token_ids": choice["prompt_token_ids"],
        "output_token_ids": choice["token_ids"],
        "per_step_drafted": spec["per_step_drafted"],
        "per_step_accepted": spec["per_step_accepted"],
    }


def replay(trace: dict, drafter: Drafter) -> list[tuple[int, int]]:
    """(drafted, accepted) for each verify step where `drafter` drafts, walking the recorded greedy output.

    Greedy output does not depend on the drafts, so any drafter can be replayed over it. The first output token
    comes from the prefill; after each emitted token the context is the prompt and the output up to it, the draft is
    checked against the tokens that follow, and the step emits the accepted tokens plus one.
    """
    prompt, output = trace["prompt_token_ids"], trace["output_token_ids"]
    steps, last = [], 0  # index of the last emitted output token
    while last < len(output) - 1:
        draft = drafter(prompt + output[: last + 1])
        accepted = _common_prefix(draft, output[last + 1 :])  # past the output's end, vLLM's count may be higher
        if draft:
            steps.append((len(draft), accepted))
        last += accepted + 1
    return steps


def lookup_drafter(speculative_config: dict) -> Drafter:
    """Retain's `ngram_lookup` with the settings of vLLM's ngram config."""
    k = speculative_config["num_speculative_tokens"]
    n_min, n_max = speculative_config["prompt_lookup_min"], speculative_config["prompt_lookup_max"]
    return lambda context: ngram_lookup(context, k=k, n_min=n_min, n_max=n_max)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def main(argv: list[str]) -> int:
    from decoding.lab.workloads import copy_edit, free_text
    from decoding.vllm.launch import NGRAM_DEFAULTS

    url, out = argv
    workloads = [copy_edit("bisect", "with the parameter `hi` renamed to `high`"), free_text()]
    traces = {w.name: trace_of(complete(url, w.prompt, 160), NGRAM_DEFAULTS) for w in workloads}
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(traces, handle)
    for name, trace in traces.items():
        print(f"{name}: {len(trace['per_step_drafted'])} verify steps, {len(trace['output_token_ids'])} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
