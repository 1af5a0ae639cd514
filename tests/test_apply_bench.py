"""The applier on real commits (evals/data/edits-dev.jsonl): the figures the design promises."""

import pytest

from evals.apply_bench import DEFAULT_CASES, load_cases, run


@pytest.fixture(scope="module")
def report():
    return run(load_cases(DEFAULT_CASES), progress=False)


def _rate(part, *outcomes):
    return sum(part["outcomes"].get(o, 0) for o in outcomes) / part["total"]


def test_exact_scripts_always_land(report):
    assert _rate(report["exact"], "exact") == 1.0


def test_miscounted_retains_before_quoted_ops_land(report):
    assert report["perturbed_before_quoted"]["total"] > 500
    assert _rate(report["perturbed_before_quoted"], "exact") >= 0.99


def test_miscounted_retains_before_line_inserts_land_or_are_refused(report):
    part = report["perturbed_before_line_insert"]
    assert part["total"] > 300
    assert _rate(part, "exact", "blank-lines") >= 0.85


def test_malformed_scripts_never_change_the_file(report):
    assert _rate(report["malformed"], "refused, unchanged") == 1.0


def test_large_file_benchmark_is_exact(report):
    assert report["large_file"]["lines"] >= 4900 and report["large_file"]["ops"] >= 50


def test_a_missing_or_malformed_cases_file_is_a_usage_error_naming_it(tmp_path, capsys):
    from tui.cli import main

    with pytest.raises(SystemExit) as info:
        main(["bench", "apply", "--cases", str(tmp_path / "none.jsonl")])
    assert info.value.code == 2 and "no cases file at" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(SystemExit) as info:
        main(["bench", "apply", "--cases", str(bad)])
    assert info.value.code == 2 and f"{bad}:1: a case needs" in capsys.readouterr().err
