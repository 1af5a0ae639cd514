"""The typed JSON report (evals.schema): what is written reads back equal, a report from before the schema field
reads when its shape is today's, and anything else is refused naming the file and the field."""

import json

import pytest
from test_evals_decode import fake_decoding

from evals.command import main
from evals.schema import SCHEMA, Report, ReportError, read_report


@pytest.fixture
def written(tmp_path, monkeypatch):
    """A decoded report as `agent eval` writes it (decoding stood in for), as JSON."""
    out = tmp_path / "eval.json"
    fake_decoding(monkeypatch, [])
    assert main(["--limit", "3", "--formats", "ot,udiff,whole", "--decode-formats", "ot,whole", "--drafters",
                 "off,ngram", "--free-running-tokens", "0", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_a_written_report_reads_back_equal_and_writes_the_same_json(written):
    assert written["schema"] == SCHEMA
    report = Report.from_json(written)
    assert report.to_json() == written
    assert Report.from_json(json.loads(json.dumps(report.to_json()))) == report
    assert report.cases[0].decode["ngram"].formats["ot"].applies is True
    assert report.summary.decode is not None and report.summary.decode.drafters == ["off", "ngram"]
    assert report.summary.formats["ot"].perturbed_trials and report.summary.formats["whole"].perturbed_trials is None
    assert "perturbed" not in written["cases"][0]["formats"]["whole"]  # nothing measured: no field, as before


def test_a_report_without_the_schema_field_reads_when_its_shape_is_todays(written, tmp_path):
    del written["schema"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(written))
    assert read_report(path).schema == SCHEMA


@pytest.mark.parametrize(("spoil", "problem"), [
    (lambda r: r["cases"][1]["formats"]["ot"].update(tokens="ten"),
     "cases[1].formats.ot.tokens is a string, not an integer"),
    (lambda r: r["cases"][0]["decode"]["off"].pop("formats"), "cases[0].decode.off.formats is missing"),
    (lambda r: r["summary"].update(formats=[]), "summary.formats is a list, not an object"),
    (lambda r: r["cases"][0]["formats"]["ot"]["perturbed"][0].update(applies=1),
     "cases[0].formats.ot.perturbed[0].applies is a number, not a boolean"),
    (lambda r: r.update(schema=2), "schema 2, and this agent eval reads schema 1"),
])
def test_a_malformed_report_is_refused_naming_the_file_and_the_field(written, tmp_path, spoil, problem):
    spoil(written)
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(written))
    with pytest.raises(ReportError) as refused:
        read_report(path)
    message = str(refused.value)
    assert message.startswith(f"{path} is not a JSON report of agent eval: ") and problem in message


def test_resume_of_a_malformed_report_is_a_usage_error_that_says_what_is_wrong(written, tmp_path, capsys):
    written["cases"] = {"a": 1}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(written))
    assert main(["--limit", "1", "--drafters", "off", "--json", str(path), "--resume"]) == 2
    assert f"--resume: {path} is not a JSON report of agent eval: cases is an object, not a list" in (
        capsys.readouterr().err)
    path.write_text("[1, 2")
    assert main(["--limit", "1", "--drafters", "off", "--json", str(path), "--resume"]) == 2
    assert f"{path} is not JSON" in capsys.readouterr().err
