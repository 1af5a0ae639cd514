"""The cost per applied edit (evals.cost, evals.report.render_cost) on synthetic reports, and the case selection
for decoding (--stratify, --whole-cases): arithmetic with no model."""

import json
from dataclasses import replace

import pytest

from evals.cases import load_suite, shortest, stratify
from evals.cost import best_drafter, summarize_cost
from evals.decode_run import with_applies
from evals.report import render_cost
from evals.schema import (
    CaseFigures,
    CostRatio,
    CostSummary,
    DecodeSummary,
    DrafterRun,
    ForcedRun,
    FormatFigures,
    FormatSummary,
    PerApplied,
    Perturbation,
    RatioFigures,
    Report,
    ReportError,
    Summary,
)

DRAFTERS = ("ngram", "cursor", "hybrid")
# target forwards per format, drafter and edit (edits a, b, c); whole was decoded on edit a only
FORWARDS = {
    "ot": {"ngram": [10, 20, 30], "cursor": [12, 20, 30], "hybrid": [8, 22, 24]},  # best: hybrid, 54
    "search-replace": {"ngram": [16, 20, 40], "cursor": [15, 25, 40], "hybrid": [15, 21, 40]},  # best: ngram, 76
    "udiff": {"ngram": [20, 20, 18], "cursor": [12, 30, 30], "hybrid": [30, 30, 30]},  # best: ngram, 58
    "whole": {"ngram": [120], "cursor": [100], "hybrid": [110]},  # best: cursor
}
RATES = {  # (clean, perturbed, grounded) over every edit measured; whole has no perturbations
    "ot": (1.0, 0.9, 0.9), "search-replace": (1.0, 0.6, 0.95), "udiff": (1.0, 0.75, 1.0), "whole": (1.0, None, None),
}


def run(value: int, tokens_per_forward: int = 2) -> ForcedRun:
    return ForcedRun(tokens=tokens_per_forward * value, target_forwards=value, seconds=value / 10, drafted=0,
                     accepted=0)


def rates(clean: float, perturbed: float | None = None, grounded: float | None = None) -> FormatSummary:
    return FormatSummary(cases=180, tokens_median=0, tokens_p90=0, applies=clean, perturbed_applies=perturbed,
                         grounded_applies=grounded)


def synthetic_report() -> Report:
    cases = [CaseFigures(edit, "python", {}, {drafter: DrafterRun(0, 0.0, {}) for drafter in DRAFTERS})
             for edit in "abc"]
    for fmt, per_drafter in FORWARDS.items():
        for drafter, values in per_drafter.items():
            for case, value in zip(cases, values, strict=False):
                case.decode[drafter].formats[fmt] = run(value)
    formats = {fmt: rates(*figures) for fmt, figures in RATES.items()}
    decode = DecodeSummary(cases=3, formats=list(FORWARDS), drafters=list(DRAFTERS), whole_cases=1,
                           reference_forced={}, free_running={}, max_tokens=0)
    return Report(cases, Summary(formats, decode))


def report_json_with_cost(report: Report, cost: CostSummary) -> dict:
    """The report's JSON as `agent eval` writes it, with the cost summary in it."""
    report.summary.cost = cost
    return json.loads(json.dumps(report.to_json()))


@pytest.fixture
def cost():
    report = synthetic_report()
    return summarize_cost(report.cases, report.summary.formats, DRAFTERS)


def _ratio(cost: CostSummary, fmt: str, drafter: str | None) -> CostRatio:
    (found,) = [r for r in cost.ratios if r.format == fmt and r.drafter == drafter]
    return found


def test_each_format_gets_the_drafter_with_the_fewest_forwards_in_total(cost):
    assert {fmt: row.drafter for fmt, row in cost.formats.items()} == {
        "ot": "hybrid", "search-replace": "ngram", "udiff": "ngram", "whole": "cursor"}
    # hybrid loses edit b to ngram but wins the total; a tie goes to the drafter named first
    cases = synthetic_report().cases
    for case in cases:
        case.decode["cursor"].formats["ot"] = replace(case.decode["hybrid"].formats["ot"])
    assert best_drafter(cases, "ot", DRAFTERS) == "cursor"
    assert best_drafter(cases, "ot-counts", DRAFTERS) is None
    # whole ties ngram and cursor: the baseline's drafter (cursor) is its best, so it is compared once
    for case in cases:
        if "whole" in case.decode["ngram"].formats:
            case.decode["ngram"].formats["whole"].target_forwards = 100
    formats = synthetic_report().summary.formats
    cost = summarize_cost(cases, formats, DRAFTERS)
    assert cost.formats["whole"].drafter == "cursor"
    assert [r.drafter for r in cost.ratios if r.format == "whole"] == ["cursor"]


def test_a_format_row_divides_its_forwards_by_each_apply_rate(cost):
    ot, whole = cost.formats["ot"], cost.formats["whole"]
    assert (ot.edits, ot.target_forwards, ot.tokens_per_forward) == (3, 54, 2.0)
    assert ot.forwards_median == 22
    assert ot.per_applied["perturbed"] == PerApplied(pytest.approx(22 / 0.9), pytest.approx(18 / 0.9))
    assert ot.per_applied["clean"] == PerApplied(22, 18)
    # whole has no perturbations: its clean rate stands for the perturbed one
    assert whole.edits == 1 and whole.rates == {"perturbed": 1.0, "grounded": 1.0, "clean": 1.0}
    assert cost.formats["search-replace"].per_applied["grounded"] == PerApplied(
        pytest.approx(20 / 0.95), pytest.approx(76 / 3 / 0.95))


def test_ot_against_a_baseline_is_the_median_of_per_edit_ratios_and_the_ratio_of_totals(cost):
    against = _ratio(cost, "search-replace", "ngram")
    assert against.why.endswith("also its best drafter") and against.edits == 3
    # per edit, forwards alone: 8/16, 22/20, 24/40; per applied edit (perturbed) each times 0.6/0.9
    assert against.forwards == RatioFigures(pytest.approx(0.6), pytest.approx(54 / 76))
    assert against.perturbed == RatioFigures(pytest.approx(0.6 * 0.6 / 0.9), pytest.approx(54 / 76 * 0.6 / 0.9))
    assert against.clean == against.forwards  # both always apply clean
    assert against.wins == 3  # 0.33, 0.73, 0.4: all below 1


def test_whole_is_compared_on_the_edits_it_was_decoded_on_and_best_drafters_that_are_no_baseline_get_a_row(cost):
    whole = _ratio(cost, "whole", "cursor")
    assert whole.edits == 1 and whole.forwards.median == pytest.approx(8 / 100)
    assert whole.perturbed.median == pytest.approx(8 / 0.9 / 100)
    assert [(r.format, r.drafter) for r in cost.ratios] == [
        ("whole", "cursor"), ("search-replace", "ngram"), ("udiff", "ngram"), ("cheapest alternative", None)]
    report = synthetic_report()
    cost = summarize_cost(report.cases, report.summary.formats, ("cursor", "hybrid"))  # no ngram run
    assert [(r.format, r.drafter, r.why) for r in cost.ratios[:3]] == [
        ("whole", "cursor", "Cursor-style speculative rewrite; also its best drafter"),
        ("search-replace", "hybrid", "its best drafter"), ("udiff", "cursor", "its best drafter")]


def test_the_cheapest_alternative_is_taken_edit_by_edit(cost):
    cheapest = _ratio(cost, "cheapest alternative", None)
    # perturbed costs per edit: a min(whole 100, s/r 16/.6, udiff 20/.75) = 26.7; b min(33.3, 26.7); c min(66.7, 24)
    ot = [8 / 0.9, 22 / 0.9, 24 / 0.9]
    alternative = [20 / 0.75, 20 / 0.75, 18 / 0.75]
    assert cheapest.perturbed.median == pytest.approx(ot[1] / alternative[1])
    assert cheapest.perturbed.total == pytest.approx(sum(ot) / sum(alternative))
    assert cheapest.wins == 2  # edit c: 26.7 against 24
    assert cheapest.forwards.median == pytest.approx(22 / 20)  # 8/16, 22/20, 24/18


def test_a_format_that_never_applies_has_no_cost_per_applied_edit():
    report = synthetic_report()
    report.summary.formats["ot"].perturbed_applies = 0.0
    cost = summarize_cost(report.cases, report.summary.formats, DRAFTERS)
    assert cost.formats["ot"].per_applied["perturbed"] == PerApplied(None, None)
    against = _ratio(cost, "udiff", "ngram")
    assert against.perturbed == RatioFigures(None, None) and against.wins is None
    assert against.clean.median == pytest.approx(1.1)  # 8/20, 22/20, 24/18
    report.summary.cost = cost
    assert "| ot | hybrid | 3 | 2.00 | 22 | 0.0% | 90.0% | 100.0% | n/a | n/a | 24 | 20 | 22 | 18 |" in render_cost(
        report.summary)


def test_the_table_shows_each_format_and_ots_ratios(cost):
    report = synthetic_report()
    report.summary.cost = cost
    table = "\n".join(render_cost(report.summary))
    assert "reference-forced on 3 edits (whole files on 1 of them" in table
    assert "| search-replace | ngram | 3 | 2.00 | 20 | 60.0% | 95.0% | 100.0% | 33 | 42 | 21 | 27 | 20 | 25 |" in table
    assert "| whole + cursor | Cursor-style speculative rewrite; also its best drafter | 1 | 0.09x |" in table
    assert "| 3 of 3 | 2 of 3 |" in table and "ot + hybrid against each alternative" in table


def test_the_cost_summary_is_read_back_from_the_json_as_written(cost):
    """`agent eval --resume` and `--from` read the report back: the cost summary comes back typed and equal."""
    written = report_json_with_cost(synthetic_report(), cost)
    assert written["summary"]["cost"]["ratios"][0]["format"] == "whole"  # the JSON's field names
    assert Report.from_json(written).summary.cost == cost
    written["summary"]["cost"]["formats"]["ot"]["per_applied"]["clean"]["median"] = "22"
    with pytest.raises(ReportError, match=r"summary\.cost\.formats\.ot\.per_applied\.clean\.median is a string"):
        Report.from_json(written)


def trial(applies: bool, grounded: bool | None) -> Perturbation:
    return Perturbation("miscount", "exact" if applies else "refused", applies, grounded)


def test_each_decoded_row_carries_the_applies_of_its_case_and_format():
    decode = {"ngram": DrafterRun.of({fmt: run(5) for fmt in ("ot", "udiff", "search-replace", "whole")})}
    formats = {
        "ot": FormatFigures(1, 1, True, [trial(True, True), trial(False, True), trial(False, False)]),
        "udiff": FormatFigures(1, 1, True, [trial(False, False)]),  # grounding refuses all
        "search-replace": FormatFigures(1, 1, True, [trial(False, None)]),  # measured before grounding was
        "whole": FormatFigures(1, 1, True),
    }
    rows = with_applies(decode, formats)["ngram"].formats
    assert rows["ot"] == replace(run(5), applies=True, applies_perturbed=pytest.approx(1 / 3), applies_grounded=0.5)
    assert rows["udiff"].applies_perturbed == 0 and rows["udiff"].applies_grounded == 1.0  # as the clean one
    assert rows["search-replace"].applies_grounded is None  # unknown
    assert rows["whole"].applies is True and rows["whole"].applies_perturbed is rows["whole"].applies_grounded
    assert rows["whole"].applies_grounded is None


def test_a_report_from_before_the_grounded_basis_is_costed_and_shown_with_the_perturbed_rate_for_it():
    report = synthetic_report()
    for part in report.summary.formats.values():
        part.grounded_applies = None
    cost = summarize_cost(report.cases, report.summary.formats, DRAFTERS)
    for row in cost.formats.values():
        assert row.rates["grounded"] == row.rates["perturbed"]
        assert row.per_applied["grounded"] == row.per_applied["perturbed"]
    against = _ratio(cost, "udiff", "ngram")
    assert against.grounded == against.perturbed and against.wins_grounded == against.wins
    # a cost summary written before the grounded basis (no grounded figures in its JSON at all) still reads and renders
    written = report_json_with_cost(report, cost)
    for row in written["summary"]["cost"]["formats"].values():
        del row["rates"]["grounded"], row["per_applied"]["grounded"]
    for ratio in written["summary"]["cost"]["ratios"]:
        del ratio["grounded"], ratio["wins_grounded"]
    report = Report.from_json(written)
    table = "\n".join(render_cost(report.summary))
    assert "| udiff | ngram | 3 | 2.00 | 20 | 75.0% | n/a | 100.0% | 27 | 26 | n/a | n/a | 20 | 19 |" in table
    assert "| 3 | 0.92x | 0.78x | n/a | n/a | 1.10x | 0.93x | 1.10x | 0.93x | 2 of 3 | n/a of 3 |" in table


def _case(case_id: str, language: str, size: int) -> dict:
    return {"id": case_id, "language": language, "before": "x" * size}


def test_stratify_spreads_over_languages_in_proportion_and_over_sizes():
    cases = [_case(f"py{i}", "python", 100 + i) for i in range(20)]
    cases += [_case(f"go{i}", "go", 500 - i) for i in range(6)] + [_case("ts0", "typescript", 50)]
    picked = stratify(cases, 6)
    assert [c["id"] for c in picked] == [c["id"] for c in cases if c in picked]  # input order
    languages = [c["language"] for c in picked]
    assert (languages.count("python"), languages.count("go"), languages.count("typescript")) == (4, 1, 1)
    # python: evenly spaced along the sizes (the 20 files sorted: picks 2, 7, 12, 17)
    assert [c["id"] for c in picked if c["language"] == "python"] == ["py2", "py7", "py12", "py17"]
    assert stratify(list(reversed(cases)), 6) == list(reversed(picked))  # the same cases whatever the order
    assert [c["language"] for c in stratify(cases, 2)] == ["python", "go"]  # too few for every language
    assert stratify(cases, 100) == cases


def test_stratify_on_the_suite_and_the_shortest_file():
    suite = load_suite()
    picked = stratify(suite, 5)
    assert len(picked) == 5 and len({c["language"] for c in picked}) == 5
    assert shortest(suite, 1)[0]["before"] == min((c["before"] for c in suite), key=len)


def test_line_ot_gets_its_own_row_and_ratios_beside_ots():
    report = synthetic_report()
    for case, value in zip(report.cases, [6, 10, 12], strict=True):
        case.decode["cursor"].formats["ot-lines"] = run(value, tokens_per_forward=3)
    report.summary.formats["ot-lines"] = rates(1.0, 0.5)
    cost = summarize_cost(report.cases, report.summary.formats, DRAFTERS)
    assert cost.formats["ot-lines"].drafter == "cursor" and cost.subject == "ot"
    assert [r.format for r in cost.ratios] == ["whole", "search-replace", "udiff", "cheapest alternative"]
    (lines,) = cost.other_subjects.values()
    against = next(r for r in lines if r.format == "search-replace")
    assert against.clean.total == pytest.approx(28 / 76)
    report.summary.cost = cost
    table = "\n".join(render_cost(report.summary))
    assert "| ot-lines | cursor | 3 | 3.00 | 10 | 50.0% | 50.0% | 100.0% | 20 |" in table  # no grounded rate: perturbed
    assert "ot + hybrid against each alternative" in table and "ot-lines + cursor against each alternative" in table
