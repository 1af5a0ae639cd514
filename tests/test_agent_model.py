"""The model client's usage report: speculation stats the server sends beyond OpenAI's usage fields."""

from replay import ReplayServer, Turn

from agent.client import Model

# what vLLM 0.32 puts on the final chunk with --per-request-spec-decode-metrics summary
VLLM_METRICS = {
    "metrics": {
        "speculative_decoding": {
            "mean_acceptance_length": 3.25,
            "draft_acceptance_rate": 0.5625,
            "acceptance_histogram": [1, 0, 1, 2],
            "num_spec_steps": 4,
            "num_accepted_draft_tokens": 9,
            "num_draft_tokens": 16,
            "num_spec_tokens": 4,
        }
    }
}


def test_vllms_per_request_speculation_metrics_reach_the_usage_report():
    turn = Turn("def f():\n    return 1\n", completion_tokens=13, final_chunk_extra=VLLM_METRICS)
    with ReplayServer([turn]) as server:
        reply = Model("hosted_vllm/replay-model", api_base=server.url).complete([{"role": "user", "content": "f"}])
    assert reply.text == "def f():\n    return 1\n" and reply.usage["completion_tokens"] == 13
    assert reply.usage["speculation"] == {
        "method": "vllm", "drafted": 16, "accepted": 9, "verify_steps": 4, "mean_accepted_length": 3.25
    }


def test_a_server_without_speculation_metrics_reports_none():
    with ReplayServer([Turn("ok")]) as server:
        reply = Model("hosted_vllm/replay-model", api_base=server.url).complete([{"role": "user", "content": "f"}])
    assert reply.text == "ok" and "speculation" not in reply.usage
