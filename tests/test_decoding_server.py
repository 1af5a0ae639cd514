"""The OpenAI-compatible server: requests as real clients send them, errors as OpenAI shapes them, streams."""

import json
import threading
import urllib.error
import urllib.request

import pytest
from serving_helpers import at_once, get, parse_metrics, stream_chat

from decoding.drafting.base import Draft, DraftContext
from decoding.engine.generation import SpecStats
from decoding.lab.workloads import shared_prefix_prompts, standard_workloads
from decoding.serving.chat import gemma_chat_prompt
from decoding.serving.server import (
    PredictionTally,
    RequestError,
    Service,
    Usage,
    check_context,
    make_server,
    parse_request,
)

slow = pytest.mark.slow


@pytest.fixture(scope="module")
def base_url(embedded_model):
    server = make_server(Service(embedded_model), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def call(url: str, body=None, raw: bytes | None = None) -> tuple[int, bytes]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def sse_events(payload: bytes) -> list:
    lines = [line[len("data: ") :] for line in payload.decode().split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@slow
def test_models_lists_the_embedded_model(base_url):
    status, body = call(f"{base_url}/models")
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == ["gemma-3-270m"]


@slow
def test_completion_with_prediction_speculates_and_matches_plain_decoding(base_url):
    workload = standard_workloads()[0]
    request = {"model": "gemma-3-270m", "prompt": workload.prompt, "max_tokens": 48, "temperature": 0}
    _, plain = call(f"{base_url}/completions", {**request, "speculation": "off"})
    status, spec = call(
        f"{base_url}/completions",
        {**request, "speculation": "ngram", "prediction": {"type": "content", "content": workload.prediction}},
    )
    assert status == 200
    plain, spec = json.loads(plain), json.loads(spec)
    assert spec["object"] == "text_completion"
    assert spec["choices"][0]["text"] == plain["choices"][0]["text"] != ""
    usage = spec["usage"]
    assert usage["completion_tokens"] == 48 and spec["choices"][0]["finish_reason"] == "length"
    assert usage["speculation"]["method"] == "ngram"
    predicted = usage["completion_tokens_details"]
    assert 16 < predicted["accepted_prediction_tokens"] <= usage["speculation"]["accepted"]
    assert predicted["rejected_prediction_tokens"] <= usage["speculation"]["drafted"] - usage["speculation"]["accepted"]
    assert "completion_tokens_details" not in plain["usage"]  # no prediction sent, no prediction accounting
    assert usage["speculation"]["target_forwards"] < plain["usage"]["speculation"]["target_forwards"]
    assert plain["usage"]["speculation"] == {
        "method": "off",
        "drafted": 0,
        "accepted": 0,
        "target_forwards": 48,  # the prefill yields the first token
        "mean_accepted_length": 1.0,
        "accepted_by": {},
    }


def answered(url: str, body: dict) -> dict:
    status, payload = call(url, body)
    assert status == 200, payload
    return json.loads(payload)


@slow
def test_a_second_request_sharing_a_long_prefix_reuses_its_cache(base_url, embedded_model):
    """Issue #17: a 2,000-token shared prefix is prefilled once (the second request reports it cached) and greedy
    text is the uncached server's. How much sooner the first token comes is `agent bench decode`'s figure."""
    first, second = shared_prefix_prompts(embedded_model.tokenizer, 2000)
    request = {"max_tokens": 1, "temperature": 0, "speculation": "off"}
    cold_answer = answered(f"{base_url}/completions", {**request, "prompt": first})
    warm_answer = answered(f"{base_url}/completions", {**request, "prompt": second})
    assert cold_answer["usage"]["prompt_tokens_details"]["cached_tokens"] < 16  # what other tests' prompts share
    assert warm_answer["usage"]["prompt_tokens_details"]["cached_tokens"] >= 2000
    longer = {"max_tokens": 24, "temperature": 0, "speculation": "off", "prompt": second}
    cached = answered(f"{base_url}/completions", longer)
    assert cached["usage"]["prompt_tokens_details"]["cached_tokens"] == cached["usage"]["prompt_tokens"] - 1
    server = make_server(Service(embedded_model, prefix_cache_bytes=0), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uncached = answered(f"http://127.0.0.1:{server.server_address[1]}/v1/completions", longer)
    finally:
        server.shutdown()
        server.server_close()
    assert uncached["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert cached["choices"][0]["text"] == uncached["choices"][0]["text"] != ""


@slow
def test_hybrid_reports_which_drafter_each_accepted_token_came_from(base_url):
    workload = standard_workloads()[0]  # a copy edit: the cursor drafter copies most
    request = {"model": "gemma-3-270m", "prompt": workload.prompt, "max_tokens": 48, "temperature": 0}
    _, plain = call(f"{base_url}/completions", {**request, "speculation": "off"})
    status, spec = call(
        f"{base_url}/completions",
        {**request, "prediction": {"type": "content", "content": workload.prediction}},  # auto = hybrid
    )
    assert status == 200
    plain, spec = json.loads(plain), json.loads(spec)
    assert spec["choices"][0]["text"] == plain["choices"][0]["text"]
    stats = spec["usage"]["speculation"]
    assert stats["method"] == "hybrid" and set(stats["accepted_by"]) <= {"cursor", "ngram", "mtp"}
    assert sum(stats["accepted_by"].values()) == stats["accepted"] and stats["accepted_by"]["cursor"] > 16


@slow
def test_streamed_chat_with_usage_matches_the_unstreamed_answer(base_url):
    request = {
        "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a color."}],
        "max_tokens": 16,
        "temperature": 0,
    }
    status, whole = call(f"{base_url}/chat/completions", request)
    assert status == 200
    whole = json.loads(whole)
    status, streamed = call(
        f"{base_url}/chat/completions", {**request, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert status == 200
    events = sse_events(streamed)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert events[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert (
        events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
    )


@slow
def test_sixty_four_streaming_clients_at_once_each_get_the_text_of_their_request_alone(base_url):
    """All 64 wait in the queue (its default size) and are answered, none reset; /metrics counts them."""
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    messages = ["Name a color.", "Count: one, two,", "Say hello.", "What is 2 + 2?"]
    alone = {m: stream_chat(port, m) for m in messages}
    assert all(status == 200 and text for status, _, text in alone.values())
    before = parse_metrics(get(port, "/metrics")[2])
    answers = at_once(64, lambda i: stream_chat(port, messages[i % 4]))
    assert [(status, text) for status, _, text in answers] == [alone[messages[i % 4]][::2] for i in range(64)]
    after = parse_metrics(get(port, "/metrics")[2])
    assert after['retain_requests_total{outcome="ok"}'] - before['retain_requests_total{outcome="ok"}'] == 64
    assert after["retain_generation_tokens_total"] > before["retain_generation_tokens_total"]
    assert after["retain_requests_running"] == after["retain_requests_queued"] == 0


@slow
@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("completions", b"{not json", 400, None),
        ("completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
        ("completions", {"prompt": "x", "speculation": "psychic"}, 400, "speculation"),
        ("completions", {"prompt": ""}, 400, "prompt"),
        ("completions", {"prompt": "x", "prediction": {"type": "file"}}, 400, "prediction"),
        ("completions", {"prompt": "x", "model": "gpt-9"}, 404, "model"),
        ("chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
        ("chat/completions", {"messages": []}, 400, "messages"),
        ("completions", {"prompt": "x", "max_tokens": 10**9}, 400, "max_tokens"),
        ("embeddings", {"input": "x"}, 404, None),
    ],
)
def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(base_url, path, body, status, param):
    got, payload = call(f"{base_url}/{path}", raw=body if isinstance(body, bytes) else json.dumps(body).encode())
    assert got == status
    error = json.loads(payload)["error"]
    assert error["param"] == param and error["message"]
    assert call(f"{base_url}/models")[0] == 200


def test_chat_prompt_uses_gemma_turns_and_folds_the_system_message():
    prompt = gemma_chat_prompt(
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert prompt == (
        "<start_of_turn>user\nBe terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )


def test_request_defaults_and_validation():
    job = parse_request({"prompt": "x", "stop": "\n"}, chat=False, model_name="m")
    assert (job.max_tokens, job.sampling.temperature, job.speculation, job.stop) == (512, 1.0, "auto", ["\n"])
    with pytest.raises(RequestError, match=r"^n must be 1, got 2 \(this server returns one choice per request"):
        parse_request({"prompt": "x", "n": 2}, chat=False, model_name="m")
    with pytest.raises(RequestError, match=r"^max_tokens must be at least 1, got 0$"):
        parse_request({"prompt": "x", "max_tokens": 0}, chat=False, model_name="m")
    with pytest.raises(RequestError, match=r"^temperature must be between 0 and 2, got 3$"):
        parse_request({"prompt": "x", "temperature": 3}, chat=False, model_name="m")
    with pytest.raises(RequestError, match="logprobs"):
        parse_request({"prompt": "x", "logprobs": 2}, chat=False, model_name="m")
    assert parse_request({"prompt": "x", "tools": [], "logprobs": False}, chat=False, model_name="m").prompt == "x"


def test_grounding_is_on_for_edits_by_default_and_validated():
    def job(**body):
        return parse_request({"prompt": "x", **body}, chat=False, model_name="m")

    prediction = {"type": "content", "content": "a = 1\n"}
    assert job().grounding == "off" and job(prediction=prediction).grounding == "edit"
    assert job(prompt="Fix it.\n```edit a.py\n").grounding == "edit"  # the prompt opens an edit block
    assert job(prediction=prediction, grounding="off").grounding == "off"
    grounded = job(prediction=prediction, grounding={"mode": "edit", "path": "a.py"})
    assert (grounded.grounding, grounded.grounding_path) == ("edit", "a.py")
    for bad, message in [("on", "grounding must be"), ({"mode": "edit", "paths": "a"}, "no field 'paths'"),
                         ({"path": ""}, "grounding.path must be")]:
        with pytest.raises(RequestError, match=message):
            job(grounding=bad)


GROUNDING_SOURCE = "def cube(x):\n    return x * x * x\n\n\ndef square(x):\n    return x * x\n"
GROUNDING_PROMPT = (
    'Edit scripts change files. retain("text") keeps text, delete("text") removes it, insert("text") adds it.\n\n'
    'File a.py:\nx = 1\ny = 2\nTask: set y to 3.\n```edit a.py\nretain("x = 1\\ny = ")\ndelete("2")\ninsert("3")\n'
    f"```\n\nFile m.py:\n{GROUNDING_SOURCE}Task: rename cube to third_power.\n```edit m.py\n"
)


@slow
def test_a_grounded_edit_block_parses_and_applies_where_the_free_one_does_not(base_url):
    from tools.ot_script import parse_script
    from tools.patch import apply_edit
    from tools.syntax import language_for

    request = {"prompt": GROUNDING_PROMPT, "max_tokens": 40, "temperature": 0, "speculation": "cursor",
               "prediction": {"type": "content", "content": GROUNDING_SOURCE}}
    replies = {}
    for mode in ("off", "edit"):
        status, body = call(f"{base_url}/completions", {**request, "grounding": mode})
        assert status == 200
        replies[mode] = json.loads(body)
    free, grounded = (replies[mode]["choices"][0]["text"].split("```")[0] for mode in ("off", "edit"))
    assert "grounding" not in replies["off"]["usage"]
    usage = replies["edit"]["usage"]["grounding"]
    assert usage["blocks"] == 1 and usage["constrained_tokens"] >= 1 and usage["released_blocks"] == 0
    with pytest.raises(ValueError, match="syntax error"):
        parse_script(free)  # the base model, free, writes prose where the script goes
    apply_edit(GROUNDING_SOURCE, parse_script(grounded), language_for("m.py"))  # raises if it does not apply


def test_serve_reports_a_bad_model_path_and_exits_2(tmp_path, capsys):
    from decoding.serving.server import main

    assert main(["--model", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "config.json" in capsys.readouterr().err


def test_serve_takes_a_queue_size_and_refuses_a_negative_one(capsys):
    from decoding.serving.server import main

    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0 and "--max-queued N" in capsys.readouterr().out
    assert main(["--max-queued", "-1", "--port", "0"]) == 2  # before the model loads
    assert "--max-queued must be >= 0, got -1" in capsys.readouterr().err


def test_bench_rejects_a_zero_thread_count(capsys):
    from decoding.lab.bench import main

    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as stopped:
            main(["--threads", bad])  # before any benchmark starts: 0 is no count (auto is spelled "auto")
        assert stopped.value.code == 2 and "--threads" in capsys.readouterr().err


@slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_streamed_chat_through_litellm(base_url, monkeypatch):
    """The real client stack: litellm's hosted_vllm provider, streaming, against this server."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    chunks = litellm.completion(
        model="hosted_vllm/gemma-3-270m",
        api_base=base_url,
        messages=[{"role": "user", "content": "Count: one, two, three,"}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        usage = getattr(chunk, "usage", None) or usage
    assert "".join(parts).strip()
    assert usage is not None and 0 < usage.completion_tokens <= 12


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]}],
        [{"role": "developer", "content": "only instructions"}],
    ],
)
def test_the_exported_chat_template_renders_turns_as_this_server_does(messages):
    """vLLM serves the exported model with this template; both engines must see the same prompt."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from decoding.serving.chat import CHAT_TEMPLATE

    # the environment transformers renders chat templates in
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(CHAT_TEMPLATE)
    rendered = template.render(messages=messages, bos_token="<bos>", add_generation_prompt=True)
    assert rendered == "<bos>" + gemma_chat_prompt(messages)


def test_a_prompt_too_long_is_blamed_on_the_prompt_and_too_many_tokens_on_max_tokens():
    with pytest.raises(RequestError) as error:
        check_context(9000, 16, 8192, chat=True)
    assert error.value.param == "messages" and "9000 tokens" in str(error.value) and "8192" in str(error.value)
    with pytest.raises(RequestError) as error:
        check_context(8000, 512, 8192, chat=False)
    assert error.value.param == "max_tokens" and "set max_tokens to at most 192" in str(error.value)
    check_context(8000, 192, 8192, chat=False)  # fits exactly


class Letters:
    """A tokenizer of one token per letter (token = its code point)."""

    @staticmethod
    def decode(tokens):
        return "".join(map(chr, tokens))


class Scripted:
    """A drafter proposing the drafts it is given, in order, each with the drafter it claims to come from."""

    name = "hybrid"

    def __init__(self, drafts):
        self.drafts = list(drafts)

    def propose(self, context, k):
        text, source = self.drafts.pop(0)
        return Draft([ord(c) for c in text], source=source)


def test_prediction_tokens_count_only_drafts_copied_from_the_prediction():
    prompt = [ord(c) for c in "PROMPT"]
    output = [ord(c) for c in "def total(): pass"]
    drafts = [("def t", "cursor"), ("otal(it", "cursor"), ("): p", "mtp"), ("zzz", "ngram")]
    tally = PredictionTally(Scripted(drafts), "def total(items): return 0", Letters, len(prompt))
    at = 0
    for text, _ in drafts:  # each proposed where the output so far ends
        tally.propose(DraftContext(tokens=prompt + output[:at], limit=64), k=8)
        at += len(text)
    # "def t" agrees whole (5), "otal(it" agrees for 5 ("otal(") and has 2 rejected; the head's draft and a
    # draft that is not in the prediction are the drafter's business, not the prediction's
    assert tally.counts(output) == (10, 2)


def test_prediction_fields_appear_only_when_a_prediction_was_sent():
    stats = SpecStats(method="ngram", drafted=30, accepted=20)
    assert "completion_tokens_details" not in Usage(10, 0, 40, stats).as_dict()
    report = Usage(10, 0, 40, stats, (12, 3)).as_dict()
    assert report["completion_tokens_details"] == {"accepted_prediction_tokens": 12, "rejected_prediction_tokens": 3}
    assert report["speculation"]["accepted"] == 20  # the drafter's totals stay here
