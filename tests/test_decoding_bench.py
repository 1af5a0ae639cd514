"""`agent bench decode`: its rows, ratios and notes are what the engine and the peer really did."""

import re

import pytest

from decoding.engine.target import make_target
from decoding.lab import bench
from decoding.lab.bench import (
    PEER,
    Result,
    Row,
    bench_workload,
    format_engine,
    format_table,
    interleaved_tries,
    main,
    mtp_held_out_note,
    paired_decode_ratios,
    paired_summary,
    prefix_cache_figures,
    rounding_note,
    verify_cost,
)
from decoding.lab.workloads import standard_workloads


@pytest.mark.slow
def test_bench_runs_every_method_on_the_same_prompt_and_compares_outputs(embedded_model):
    workload = standard_workloads()[-1]  # free text: a short prompt keeps this quick
    target = make_target(embedded_model.model, weights="float32")  # transformers' peer decodes in float32 too
    rows = bench_workload(embedded_model, target, workload, 12, "float32", 2, lookup=10)
    assert [r.method for r in rows] == ["plain", "ngram", "cursor", "mtp", "hybrid", PEER]
    assert all(r.tokens == 12 and r.matches_plain for r in rows)
    assert rows[0].speedup_vs_plain == 1.0 and rows[-1].ratio_vs_peer == 1.0
    assert rows[1].mean_accepted_length >= 1.0 and rows[0].mean_accepted_length == 1.0
    mtp = rows[3]
    assert mtp.acceptance_at and mtp.draft_ms_per_token > 0 and set(mtp.accepted_by) <= {"mtp"}
    table = format_table(rows)
    assert "free-text" in table and "NO" not in table


@pytest.mark.parametrize("option", ["--max-tokens", "--repeats", "--prefix-tokens", "--mtp-k"])
def test_a_count_below_one_is_refused_before_anything_loads(option, capsys):
    assert main([option, "0"]) == 2
    assert "--max-tokens, --repeats, --prefix-tokens and --mtp-k must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_a_prefix_longer_than_its_file_is_refused_saying_how_long_the_file_is(embedded_model, monkeypatch, capsys):
    monkeypatch.setattr(bench, "load_model", lambda model, dtype: embedded_model)
    argv = ["--prefix-tokens", "1000000", "--dtype", "float32", "--threads", "2", "--workloads", "free-text",
            "--methods", "ngram", "--max-tokens", "4", "--repeats", "1"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert re.search(r"error: --prefix-tokens 1000000: textwrap\.py has \d+ tokens, fewer than 1000000", error), error


@pytest.mark.slow
def test_bench_gives_one_mtp_row_per_draft_length(embedded_model):
    workload = standard_workloads()[-1]
    target = make_target(embedded_model.model)
    rows = bench_workload(embedded_model, target, workload, 6, "float32", 2, 10, methods=["mtp"], mtp_k=[1, 3])
    assert [r.method for r in rows] == ["plain", "mtp-k1", "mtp-k3"]
    assert all(len(r.acceptance_at) <= k for r, k in zip(rows[1:], (1, 3), strict=True))


def test_bench_notes_give_the_heads_held_out_figures_and_explain_bfloat16_mismatches():
    assert mtp_held_out_note(["ngram"]) == ""
    note = mtp_held_out_note(["hybrid"])
    assert "teacher-forced" in note and "k=3" in note
    same = Row("bfloat16", 2, "w", "ngram", 8, 1.0, 8.0, matches_plain=True)
    diverged = Row("bfloat16", 2, "w", "mtp", 8, 1.0, 8.0, matches_plain=False)
    assert rounding_note([same]) == "" and "rounds differently" in rounding_note([same, diverged])


@pytest.mark.slow
def test_bench_reports_the_verify_cost_curve_and_the_prefix_caches_first_token(embedded_model):
    target = make_target(embedded_model.model)
    ids = embedded_model.tokenizer(standard_workloads()[0].prompt).input_ids[:300]
    costs = verify_cost(target, ids, ks=(0, 4), repeats=1)  # which k is cheaper is the bench's finding, not a test's
    assert list(costs) == [0, 4]  # one figure per row count; their sizes are the bench's to print
    prefix = prefix_cache_figures(target, embedded_model.tokenizer, tokens=400, repeats=1)
    assert prefix.cached_tokens >= 400 and prefix.prompt_tokens > prefix.cached_tokens
    text = format_engine(costs, prefix)
    assert "k=4 " in text and f"{prefix.cached_tokens} of them cached" in text


def test_repeats_are_interleaved_with_the_order_reversed_every_other_round():
    order: list[str] = []

    def run(name: str):
        def once() -> Result:
            order.append(name)
            return Result([1, 2], seconds=float(len(order)), prefill_seconds=0.5)

        return once

    tries = interleaved_tries({name: run(name) for name in ("plain", "ngram", "hybrid")}, repeats=4)
    assert order == ["plain", "ngram", "hybrid", "hybrid", "ngram", "plain"] * 2
    assert {name: len(found) for name, found in tries.items()} == {"plain": 4, "ngram": 4, "hybrid": 4}
    assert [r.seconds for r in tries["hybrid"]] == [3.0, 4.0, 9.0, 10.0]


def test_drafters_are_compared_with_ngram_round_by_round():
    # ngram's best try (round 2) and hybrid's best try (round 1) fall in different rounds: compared best to best,
    # hybrid looks 0.89x; paired within each round it is as fast or faster in two rounds of three.
    decode_seconds = {"ngram": [5.0, 4.0, 5.0], "hybrid": [5.0, 5.5, 4.5]}
    rates = {name: [100 / s for s in found] for name, found in decode_seconds.items()}
    assert paired_decode_ratios(rates, "ngram") == {"hybrid": 1.0}
    rows = [
        Row("float32", 2, "w", "ngram", 101, 1.0, 1.0),
        Row("float32", 2, "w", "hybrid", 101, 1.0, 1.0, decode_paired_vs_ngram=1.0),
    ]
    assert paired_summary(rows).splitlines()[1].endswith("hybrid ÷ ngram 1.00x")
    assert paired_summary(rows[:1]) == ""


def test_the_bandwidth_lines_give_each_formats_bytes_bound_and_plain_share(tiny_gemma, monkeypatch):
    from decoding.engine.target import GemmaTarget
    from decoding.lab import bench

    targets = {fmt: GemmaTarget(tiny_gemma, fmt) for fmt in ("float32", "int8")}
    monkeypatch.setattr(bench, "read_bandwidth", lambda: 20e9)  # the measurement itself is the machine's
    per_token = targets["int8"].model.bytes_per_token()
    rows = [Row("float32", 2, "free-text", "plain", 8, 1.0, 8.0, decode_tokens_per_s=0.5 * 20e9 / per_token,
                weights="int8"),
            Row("float32", 2, "free-text", "ngram", 8, 1.0, 8.0, decode_tokens_per_s=1.0, weights="int8")]
    lines = bench.bandwidth_lines(targets, rows).splitlines()
    assert lines[0].startswith("memory read bandwidth: 20.0 GB/s")
    (int8,) = [line for line in lines if line.split()[0] == "int8"]
    assert f"bound {20e9 / per_token:5.1f} tokens/s" in int8 and int8.endswith("(50%)")
    assert "MB a token (Retain's kernel, " in int8  # which product ran: the kernel builds on every test machine
    assert "float32" in lines[1] and "plain decode: " in lines[1]  # no float32 rows: nothing to divide


def test_teacher_forcing_a_targets_own_greedy_text_gives_that_text(tiny_gemma):
    from decoding.engine.generation import generate
    from decoding.engine.target import GemmaTarget
    from decoding.lab.bench import teacher_forced_greedy

    for fmt in ("float32", "int8"):
        target = GemmaTarget(tiny_gemma, fmt)
        prompt = [3, 1, 4, 1, 5, 9, 2, 6]
        plain = generate(target, prompt, 20).tokens
        assert teacher_forced_greedy(target, prompt, plain) == plain
