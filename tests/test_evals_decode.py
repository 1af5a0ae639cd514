"""Decoding evals: reference forcing in the engine, the prompt cache, per-drafter figures, and the live-model eval."""

import json
from types import SimpleNamespace

import pytest
import torch
from replay import ReplayServer, Turn

from decoding.drafting.base import Draft, DraftContext
from decoding.engine.generation import generate
from evals.cases import load_suite
from evals.command import QUICK_DRAFTERS, QUICK_LANGUAGES, main
from evals.decode import Decoder, PromptCache, available_drafters, decode_case, edit_prompt
from tools.formats import get_format

VOCAB = 64


class CountingTarget:
    """A tiny deterministic target: it predicts (last token + 1) % VOCAB and logs the rows of every forward."""

    vocab_size = VOCAB

    def __init__(self, logit_chunk: int = 0) -> None:
        self.logit_chunk = logit_chunk
        self.cache: list[int] = []
        self.forwards: list[int] = []  # rows per forward

    @property
    def length(self) -> int:
        return len(self.cache)

    def reset(self, capacity: int) -> None:
        self.cache = []

    def forward(self, tokens: list[int]) -> torch.Tensor:
        self.forwards.append(len(tokens))
        self.cache += tokens
        return torch.tensor(tokens, dtype=torch.float32).unsqueeze(1)  # [T, 1]: the token itself

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        nxt = (hidden[:, 0].long() + 1) % VOCAB
        return torch.nn.functional.one_hot(nxt, VOCAB).float()

    def rollback(self, length: int) -> None:
        del self.cache[length:]


class Oracle:
    """Drafts the reference's continuation exactly, except at positions in `miss`."""

    name = "oracle"

    def __init__(self, prompt: list[int], reference: list[int], miss: frozenset[int] = frozenset()) -> None:
        self.prompt, self.reference, self.miss = prompt, reference, miss

    def propose(self, context: DraftContext, k: int) -> Draft:
        at = len(context.tokens) - len(self.prompt)
        return Draft([VOCAB - 1 if at + i in self.miss else t for i, t in enumerate(self.reference[at : at + k])])


PROMPT = [1, 2, 3]
REFERENCE = [10, 30, 7, 7, 7, 50, 20, 21, 22, 23, 5, 9, 63]  # ends with the stop token 63
STOP = frozenset({63})


def test_forced_generation_writes_the_reference_with_one_forward_per_token_when_plain():
    target = CountingTarget()
    gen = generate(target, PROMPT, len(REFERENCE), reference=REFERENCE, stop_ids=STOP)
    assert gen.tokens == REFERENCE[:-1] and gen.finish_reason == "stop"
    assert gen.stats.target_forwards == len(REFERENCE) == len(target.forwards)
    free = generate(CountingTarget(), PROMPT, 5)
    assert free.tokens == [4, 5, 6, 7, 8]  # without a reference the target's own choice wins


@pytest.mark.parametrize("chunk", [0, 2])
def test_forced_verification_accepts_the_drafts_that_match_and_still_runs_every_row(chunk):
    target = CountingTarget(logit_chunk=chunk)
    oracle = generate(target, PROMPT, len(REFERENCE), reference=REFERENCE, stop_ids=STOP,
                      drafter=Oracle(PROMPT, REFERENCE))
    assert oracle.tokens == REFERENCE[:-1]
    assert oracle.stats.target_forwards < len(REFERENCE) / 2
    assert oracle.stats.accepted == oracle.stats.drafted  # every drafted token was the reference's
    assert sum(target.forwards) == len(PROMPT) + oracle.stats.drafted + oracle.stats.steps

    target = CountingTarget(logit_chunk=chunk)
    missing = generate(target, PROMPT, len(REFERENCE), reference=REFERENCE, stop_ids=STOP,
                       drafter=Oracle(PROMPT, REFERENCE, miss=frozenset({2, 6, 9})))
    assert missing.tokens == REFERENCE[:-1]  # a wrong draft costs forwards, never the output
    assert missing.stats.accepted < missing.stats.drafted
    assert oracle.stats.target_forwards < missing.stats.target_forwards < len(REFERENCE)
    assert sum(target.forwards) == len(PROMPT) + missing.stats.drafted + missing.stats.steps


def test_a_fixed_draft_length_drafts_that_many_tokens_at_every_step():
    """k_min = k_start = k_max: after a miss the draft stays as long (the adaptive length would shrink to 1)."""
    target = CountingTarget()
    fixed = generate(target, PROMPT, len(REFERENCE), reference=REFERENCE, stop_ids=STOP,
                     drafter=Oracle(PROMPT, REFERENCE, miss=frozenset({0, 2})), k_min=3, k_start=3, k_max=3)
    assert fixed.tokens == REFERENCE[:-1]
    assert set(target.forwards[1:-1]) == {4}  # every verify forward: the pending token and 3 drafted ones
    target = CountingTarget()
    generate(target, PROMPT, len(REFERENCE), reference=REFERENCE, stop_ids=STOP,
             drafter=Oracle(PROMPT, REFERENCE, miss=frozenset({0, 2})), k_start=3, k_max=3)
    assert min(target.forwards[1:]) < 4  # adaptive: a miss shrinks the next draft


def test_forced_generation_cannot_run_past_its_reference():
    with pytest.raises(ValueError, match="reference"):
        generate(CountingTarget(), PROMPT, len(REFERENCE) + 1, reference=REFERENCE)


def test_prompt_cache_prefills_a_shared_prefix_once_and_changes_nothing():
    plain_target = CountingTarget()
    plain = [generate(plain_target, prompt, 6).tokens for prompt in ([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 9])]
    cached_target = CountingTarget()
    cache = PromptCache(cached_target)
    cached = [generate(cache, prompt, 6).tokens for prompt in ([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 9])]
    assert cached == plain
    assert cached_target.forwards[0] == 4  # the first prompt in full
    # the same prompt again: all but its last token come from the cache; then the shared [1, 2]
    assert sum(cached_target.forwards) == sum(plain_target.forwards) - 3 - 2


def test_prompt_cache_hands_back_the_hidden_rows_of_the_cached_prefix():
    target = CountingTarget()
    cache = PromptCache(target)
    generate(cache, [1, 2, 3, 4], 6)  # leaves [1, 2, 3, 4, 5, ...] cached, with rollbacks on the way
    cache.reset(8)  # no bigger than before: the cache is kept
    hidden = cache.forward([1, 2, 3, 7])
    assert target.forwards[-1] == 1  # only the new last token was computed
    assert hidden[:, 0].tolist() == [1, 2, 3, 7]  # yet every prompt row comes back, as from an uncached target


def test_drafters_come_from_the_engine_and_prompts_share_the_file_as_prefix():
    assert available_drafters()[:2] == ("off", "ngram") and "auto" not in available_drafters()
    case = load_suite()[0]
    ot, whole = edit_prompt(case, "ot"), edit_prompt(case, "whole")
    assert case["before"] in ot and case["instruction"] in ot and "retain(" in ot
    shared = len(ot) - len(ot.split(case["instruction"])[1])
    assert ot[:shared] == whole[:shared] and ot.endswith("<start_of_turn>model\n")


def test_cli_refuses_unknown_drafters(capsys):
    assert main(["--drafters", "ngram,telepathy", "--limit", "1"]) == 2
    assert "telepathy" in capsys.readouterr().err


def test_live_eval_applies_the_reply_and_reports_speculation(tmp_path, capsys):
    cases = load_suite(limit=2)
    good = get_format("ot").reference(cases[0]["before"], cases[0]["after"])
    speculation = {"method": "ngram", "drafted": 40, "accepted": 30, "target_forwards": 12}
    turns = [Turn(f"```edit {cases[0]['path']}\n{good}\n```", completion_tokens=25,
                  usage_extra={"speculation": speculation}),
             Turn(f"```edit {cases[1]['path']}\ndelete(\"no such text\")\n```", completion_tokens=9)]
    out = tmp_path / "live.json"
    with ReplayServer(turns) as server:
        status = main(["--limit", "2", "--formats", "ot", "--model", "openai/replay-model", "--api-base", server.url,
                       "--json", str(out)])
        sent = server.requests
    assert status == 0
    assert sent[0]["prediction"] == {"type": "content", "content": cases[0]["before"]}
    assert sent[0]["messages"][0]["role"] == "system" and cases[0]["before"] in sent[0]["messages"][-1]["content"]
    report = json.loads(out.read_text())
    first, second = (case["live"] for case in report["cases"])
    assert first["exact"] and first["applied"] and first["syntax_valid"] and first["output_tokens"] == 25
    assert first["speculation"] == speculation
    assert not second["exact"] and not second["applied"] and "refused" in second["error"]
    assert second["syntax_valid"] is None  # the file as it was says nothing of the edit
    live = report["summary"]["live"]
    assert live["exact"] == 0.5 and live["drafted"] == 40 and live["accepted"] == 30
    assert "| 50.0% | 50.0% |" in capsys.readouterr().out


def test_live_eval_reports_an_unreachable_server(capsys):
    from decoding.serving.launch import free_port

    assert main(["--limit", "1", "--model", "openai/m", "--api-base", f"http://127.0.0.1:{free_port()}/v1"]) == 4
    assert "unreachable" in capsys.readouterr().err


SMALL_BEFORE = "def area(w, h):\n    return w * h\n\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n"
SMALL_CASE = {"id": "small", "path": "shapes.py", "language": "python", "instruction": "Multiply h by w in area.",
              "before": SMALL_BEFORE, "after": SMALL_BEFORE.replace("return w * h", "return h * w")}


@pytest.mark.slow
def test_quick_cli_decodes_reference_forced_per_drafter(tmp_path, capsys, monkeypatch, embedded_model):
    monkeypatch.setattr("decoding.engine.loading.load_model", lambda *args, **kwargs: embedded_model)
    cases, out, png = tmp_path / "cases.jsonl", tmp_path / "eval.json", tmp_path / "tokens.png"
    cases.write_text(json.dumps(SMALL_CASE) + "\n")
    argv = ["--cases", str(cases), "--quick", "--drafters", "off,cursor", "--free-running-tokens", "0",
            "--json", str(out), "--plot", str(png)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "reference-forced" in table and "estimates the speedup for a model that writes this output" in table
    report = json.loads(out.read_text())
    decode = report["cases"][0]["decode"]
    assert set(decode) == {"off", "cursor"}
    for figures in decode.values():
        assert isinstance(figures["target_forwards"], int) and isinstance(figures["seconds"], float)
    tokens = report["cases"][0]["formats"]["ot"]["tokens"]
    off = decode["off"]["formats"]["ot"]
    assert off["target_forwards"] == off["tokens"] > tokens  # one forward per token: the fenced output and the stop
    assert decode["cursor"]["formats"]["ot"]["target_forwards"] <= off["target_forwards"]
    assert decode["cursor"]["target_forwards"] < decode["off"]["target_forwards"]  # summed over the formats
    assert report["summary"]["decode"]["reference_forced"]["ot"]["off"]["speedup_vs_off"] == 1.0
    assert (tmp_path / "tokens-speedup.png").read_bytes()[:4] == b"\x89PNG"
    # the cost per applied edit: every format decoded (whole too: the one case is the shortest), each row whole
    assert set(decode["cursor"]["formats"]) == {"search-replace", "udiff", "ot", "whole"}
    assert {"tokens", "target_forwards", "seconds", "applies", "applies_perturbed"} <= set(
        decode["cursor"]["formats"]["udiff"])
    cost = report["summary"]["cost"]
    assert cost["formats"]["whole"]["drafter"] == "cursor"  # drafting from the file pays when copying it
    assert [r["format"] for r in cost["ratios"]] == ["whole", "search-replace", "udiff", "cheapest alternative"]
    assert "Cost per applied edit" in table and "| whole + cursor |" in table


@pytest.mark.slow
def test_free_running_is_lossless_and_copying_pays(embedded_model):
    from decoding.lab.workloads import Workload
    from evals.decode import Decoder, free_running

    source = SMALL_BEFORE * 3
    copy = Workload("copy", f"File shapes.py:\n```python\n{source}```\n\nThe same file:\n```python\ndef area(w, h):\n",
                    prediction=source)
    rows = free_running(Decoder(embedded_model), ("off", "ngram"), 24, [copy])["copy"]
    assert rows["ngram"]["same_as_off"] and rows["off"]["target_forwards"] == rows["off"]["tokens"]
    assert rows["ngram"]["target_forwards"] < rows["off"]["target_forwards"] / 2


class Interrupted(Exception):
    pass


def fake_decoding(monkeypatch, decoded: list[str], stop_at: str | None = None) -> None:
    """Decoding without a model: each case's figures name it; `stop_at` raises as if the run were killed there."""
    import evals.decode

    def decode_case(decoder, case, formats, drafters, step):
        if case["id"] == stop_at:
            raise Interrupted
        decoded.append(case["id"])
        figures = {"tokens": 9, "target_forwards": len(case["id"]), "seconds": 1.0, "drafted": 0, "accepted": 0}
        return {d: evals.decode.drafter_totals({f: dict(figures) for f in formats}) for d in drafters}

    class Decoder(SimpleNamespace):  # with the model, or counting forwards without it (`--forwards-only`)
        def __init__(self, loaded=None, weights="float32"):
            super().__init__()

        model_free = classmethod(lambda cls: cls())

    monkeypatch.setattr(evals.decode, "Decoder", Decoder)
    monkeypatch.setattr(evals.decode, "decode_case", decode_case)
    monkeypatch.setattr("decoding.engine.loading.load_model", lambda *args, **kwargs: None)


def test_an_interrupted_decoding_run_keeps_its_cases_and_resume_decodes_only_the_rest(tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval.json"
    argv = ["--limit", "3", "--formats", "ot", "--decode-formats", "ot", "--drafters", "off,ngram",
            "--free-running-tokens", "0", "--json", str(out)]
    ids = [case["id"] for case in load_suite(limit=3)]
    decoded: list[str] = []
    fake_decoding(monkeypatch, decoded, stop_at=ids[2])
    with pytest.raises(Interrupted):
        main(argv)
    assert decoded == ids[:2]
    saved = json.loads(out.read_text())["cases"]
    assert [bool(case["decode"]) for case in saved] == [True, True, False]

    decoded.clear()
    fake_decoding(monkeypatch, decoded)
    assert main([*argv, "--resume"]) == 0
    assert decoded == ids[2:]
    assert "2 of 3 cases decoded already" in capsys.readouterr().err
    report = json.loads(out.read_text())
    forced = report["summary"]["decode"]["reference_forced"]["ot"]["off"]
    assert forced["runs"] == 3 and forced["target_forwards"] == sum(len(i) for i in ids)

    decoded.clear()  # asking for a drafter the report lacks decodes every case again
    assert main([*argv, "--drafters", "off,cursor", "--resume"]) == 0
    assert decoded == ids


@pytest.mark.parametrize(("flag", "value", "field", "written", "refusal"), [
    ("--draft-tokens", "16", "draft_tokens", 16, "decoded with --draft-tokens 16, not adaptive draft lengths"),
    ("--weights", "float32", "weights", "float32", "decoded with --weights float32, not int8"),
])
def test_resume_keeps_figures_only_from_a_report_decoded_the_same_way(
        tmp_path, monkeypatch, capsys, flag, value, field, written, refusal):
    out = tmp_path / "eval.json"
    argv = ["--limit", "2", "--formats", "ot", "--decode-formats", "ot", "--drafters", "off",
            "--free-running-tokens", "0", "--json", str(out)]
    decoded: list[str] = []
    fake_decoding(monkeypatch, decoded)
    assert main([*argv, flag, value]) == 0
    assert json.loads(out.read_text())[field] == written
    saved = out.read_text()
    assert main([*argv, "--resume"]) == 2
    assert refusal in capsys.readouterr().err
    assert out.read_text() == saved
    decoded.clear()
    assert main([*argv, flag, value, "--resume"]) == 0
    assert decoded == []


def test_resume_refuses_a_report_whose_products_ran_on_another_kernel(tmp_path, monkeypatch, capsys):
    """int8's figures depend on what multiplied it: Retain's kernel, or fbgemm (before the kernel, or where it
    cannot be built). A report from before the kernel recorded nothing, and its int8 ran on fbgemm."""
    from decoding.engine.weights import products

    out = tmp_path / "eval.json"
    argv = ["--limit", "2", "--formats", "ot", "--decode-formats", "ot", "--drafters", "off",
            "--free-running-tokens", "0", "--json", str(out)]
    fake_decoding(monkeypatch, [])
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["weights"] == "int8" and report["products"] == products("int8")
    assert main([*argv, "--resume"]) == 0  # the same kernel: its figures are kept
    del report["products"]  # as a report written before the kernel
    out.write_text(json.dumps(report))
    assert main([*argv, "--resume"]) == 2
    assert (f"was decoded with int8 products by fbgemm, before Retain's kernel, and here they run on "
            f"{products('int8')}") in capsys.readouterr().err


def test_a_report_counted_without_the_model_resumes_as_before(tmp_path, monkeypatch, capsys):
    """`--forwards-only` runs no product: its report names none, and a timed run may resume it as it could before
    reports recorded products (it was refused as an int8 report from before the kernel)."""
    out = tmp_path / "eval.json"
    argv = ["--limit", "2", "--formats", "ot", "--decode-formats", "ot", "--drafters", "ngram",
            "--free-running-tokens", "0", "--json", str(out)]
    fake_decoding(monkeypatch, [])
    assert main([*argv, "--forwards-only"]) == 0
    assert json.loads(out.read_text())["products"] == "none: forwards counted without the model"
    assert main([*argv, "--resume"]) == 0, capsys.readouterr().err


def test_a_draft_length_out_of_range_is_a_usage_error(capsys):
    assert main(["--limit", "2", "--drafters", "off", "--draft-tokens", "0"]) == 2
    assert "--draft-tokens must be from 1 to 64, not 0" in capsys.readouterr().err


def test_resume_needs_a_report_it_can_read(tmp_path, capsys):
    assert main(["--limit", "1", "--resume"]) == 2
    assert "--resume needs --json" in capsys.readouterr().err
    bad = tmp_path / "eval.json"
    bad.write_text('{"cases": 3}')
    assert main(["--limit", "1", "--drafters", "off", "--json", str(bad), "--resume"]) == 2
    assert "is not a JSON report of agent eval" in capsys.readouterr().err
    assert bad.read_text() == '{"cases": 3}'
    assert main(["--limit", "1", "--json", str(tmp_path / "no" / "eval.json")]) == 2
    assert "no directory" in capsys.readouterr().err


def test_live_eval_says_when_a_reply_was_cut_off(tmp_path):
    case = load_suite(limit=1)[0]
    half = f"```overwrite {case['path']}\n{case['after'][: len(case['after']) // 2]}"
    out = tmp_path / "live.json"
    with ReplayServer([Turn(half, completion_tokens=64, finish_reason="length")]) as server:
        assert main(["--limit", "1", "--formats", "ot", "--model", "openai/replay-model", "--api-base", server.url,
                     "--live-max-tokens", "64", "--json", str(out)]) == 0
    live = json.loads(out.read_text())["cases"][0]["live"]
    assert not live["exact"] and live["error"].startswith("reply cut off at 64 tokens")


def test_resume_keeps_only_the_formats_asked_for_and_their_sums(tmp_path, monkeypatch):
    out = tmp_path / "eval.json"
    argv = ["--limit", "1", "--formats", "ot,udiff", "--drafters", "off", "--free-running-tokens", "0",
            "--json", str(out)]
    decoded: list[str] = []
    fake_decoding(monkeypatch, decoded)
    assert main([*argv, "--decode-formats", "ot,udiff"]) == 0
    assert json.loads(out.read_text())["cases"][0]["decode"]["off"]["target_forwards"] == 2 * len(decoded[0])
    assert main([*argv, "--decode-formats", "ot", "--resume"]) == 0
    off = json.loads(out.read_text())["cases"][0]["decode"]["off"]
    assert len(decoded) == 1 and set(off["formats"]) == {"ot"} and off["target_forwards"] == len(decoded[0])


def test_free_running_compares_each_output_with_off_whatever_the_order():
    from decoding.lab.workloads import Workload
    from evals.decode import free_running

    outputs = {"off": [1, 2, 3], "ngram": [1, 2, 3], "cursor": [1, 2, 4]}
    decoder = SimpleNamespace(prompt_ids=lambda text: [0], text_ids=lambda text: [0],
                              target=SimpleNamespace(reset=lambda capacity: None),
                              generate=lambda prompt, drafter, n, sources: ({"seconds": 1.0}, outputs[drafter]))
    workload = Workload("w", "prompt", None)
    rows = free_running(decoder, ("cursor", "off", "ngram"), 3, [workload])["w"]
    assert {d: r["same_as_off"] for d, r in rows.items()} == {"cursor": False, "off": True, "ngram": True}
    assert free_running(decoder, ("ngram", "cursor"), 3, [workload])["w"]["ngram"]["same_as_off"] is None


def test_an_unreachable_live_server_is_reported_before_any_decoding(monkeypatch, capsys):
    from decoding.serving.launch import free_port

    decoded: list[str] = []
    fake_decoding(monkeypatch, decoded)
    argv = ["--limit", "1", "--drafters", "off", "--model", "openai/m", "--api-base",
            f"http://127.0.0.1:{free_port()}/v1"]
    assert main(argv) == 4
    assert decoded == [] and "unreachable" in capsys.readouterr().err


def test_stratify_decodes_a_spread_and_whole_files_on_fewer(tmp_path, monkeypatch, capsys):
    from evals.cases import stratify

    out = tmp_path / "eval.json"
    decoded: list[str] = []
    fake_decoding(monkeypatch, decoded)
    argv = ["--limit", "12", "--formats", "ot", "--decode-formats", "ot,whole", "--drafters", "ngram,cursor",
            "--free-running-tokens", "0", "--json", str(out), "--stratify", "5", "--whole-cases", "2"]
    assert main(argv) == 0
    suite = load_suite(limit=12)
    picked = stratify(suite, 5)
    assert decoded == [case["id"] for case in picked]
    report = json.loads(out.read_text())
    whole = [case["id"] for case in report["cases"] if "whole" in case["decode"].get("ngram", {}).get("formats", {})]
    assert whole == [case["id"] for case in stratify(picked, 2)]
    assert set(report["cases"][0]["formats"]) == {"ot", "whole"}  # a decoded format is measured too
    decode = report["summary"]["decode"]
    assert decode["whole_cases"] == 2 and decode["reference_forced"]["whole"]["ngram"]["runs"] == 2
    table = capsys.readouterr().out
    assert "reference-forced on 5 edits (whole files on 2 of them" in table and "| whole + cursor |" in table
    assert main([*argv, "--stratify", "0"]) == 2


def test_quick_decodes_whole_files_only_on_the_shortest(tmp_path, monkeypatch):
    out = tmp_path / "eval.json"
    fake_decoding(monkeypatch, [])
    assert main(["--quick", "--drafters", "ngram", "--free-running-tokens", "0", "--json", str(out)]) == 0
    cases = json.loads(out.read_text())["cases"]
    decoded = {case["id"]: set(case["decode"]["ngram"]["formats"]) for case in cases if case["decode"]}
    sizes = {case["id"]: len(case["before"]) for case in load_suite()}
    (whole,) = [case_id for case_id, formats in decoded.items() if "whole" in formats]
    assert len(decoded) == QUICK_LANGUAGES and sizes[whole] == min(sizes[case_id] for case_id in decoded)
    assert all(formats >= {"search-replace", "udiff", "ot"} for formats in decoded.values())


def test_quick_times_the_drafters_that_pay_on_a_cpu(tmp_path, monkeypatch):
    """--quick is the main job: it leaves out the MTP head, whose float32 verify rows only cost time on a CPU."""
    out = tmp_path / "eval.json"
    fake_decoding(monkeypatch, [])
    assert main(["--quick", "--free-running-tokens", "0", "--json", str(out)]) == 0
    decoded = [case["decode"] for case in json.loads(out.read_text())["cases"] if case["decode"]]
    assert decoded and all(tuple(drafters) == QUICK_DRAFTERS for drafters in decoded)
    assert "mtp" not in QUICK_DRAFTERS


@pytest.mark.slow
def test_forwards_without_the_model_are_the_models_forwards(embedded_model):
    case = min(load_suite(), key=lambda c: len(c["before"]))
    drafters = ("ngram", "cursor")
    with_model = decode_case(Decoder(embedded_model), case, ("ot",), drafters)
    model_free = decode_case(Decoder.model_free(), case, ("ot",), drafters)
    for drafter in drafters:
        real, counted = with_model[drafter]["formats"]["ot"], model_free[drafter]["formats"]["ot"]
        assert (counted["target_forwards"], counted["tokens"]) == (real["target_forwards"], real["tokens"]), drafter
        assert real["target_forwards"] < real["tokens"]  # drafts were accepted: the count is not trivial


def test_forwards_only_refuses_a_drafter_that_reads_the_model(capsys):
    assert main(["--forwards-only", "--drafters", "ngram,mtp", "--limit", "1"]) == 2
    assert "mtp" in capsys.readouterr().err
