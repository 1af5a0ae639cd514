"""The user's server check (evals/gpu/vllm_check.py) reading a vLLM log; against a live server: test_vllm_serve.py."""

from evals.gpu.vllm_check import Check, read_log, report

LOG = """\
(EngineCore pid=1) INFO [plugin.py:51] Retain's vLLM plugin: hybrid drafting, prediction
Retain's vLLM plugin (hybrid drafting, prediction) on vLLM's V1 model runner (CPUModelRunner)
Retain hybrid drafting on vLLM's V1 model runner (CPUModelRunner): n-gram lookup (n 2..4) in front of mtp
(Worker pid=2) INFO [cursor.py:7] Retain cursor drafts for request cmpl-1: 12 drafted, 9 accepted
(Worker pid=2) INFO [cursor.py:7] Retain cursor drafts for request cmpl-2: 4 drafted, 0 accepted
"""


def test_the_plugins_lines_are_read_from_the_log():
    check = Check(tasks=2, grounded_place=2, free_place=0, grounding_changed=2)
    read_log(check, LOG)
    assert check.plugin == "hybrid drafting, prediction" and check.runner == "V1 (CPUModelRunner)"
    assert check.hybrid == "n-gram lookup (n 2..4) in front of mtp"
    assert (check.cursor_drafted, check.cursor_accepted) == (16, 9)
    text = report(check)
    assert "Retain's plugin: on (hybrid drafting, prediction)" in text and "cursor 9/16 accepted" in text


def test_without_the_plugin_the_check_says_so():
    check = Check(tasks=2, grounded_place=1, free_place=1)
    read_log(check, "INFO vLLM started\n")
    assert report(check).startswith("Retain's plugin: not seen\nmodel runner: unknown")
