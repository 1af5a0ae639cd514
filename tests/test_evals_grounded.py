"""The grounded-decoding eval: its suite of small edits, how a written block is judged, and the command."""

import json

import pytest

from evals.grounded import Snippet, judge, prompt_for, snippets

SNIPPET = Snippet(
    "t", "m.py", "Cube with **.", "def cube(x):\n    return x * x * x\n", "def cube(x):\n    return x**3\n"
)


def test_the_suite_is_small_edits_in_at_least_four_languages():
    cases = snippets()
    assert len(cases) >= 20
    assert len({case.path.rsplit(".", 1)[1] for case in cases}) >= 4
    for case in cases:
        assert case.before != case.after and len(case.before.splitlines()) <= 60, case.id
    assert prompt_for(cases[0]).endswith(f"```edit {cases[0].path}\n")


@pytest.mark.parametrize(
    ("output", "closed", "parses", "applies", "exact"),
    [
        ('retain("    return ")\ndelete("x * x * x")\ninsert("x**3")\n```\nmore', True, True, True, True),
        ('delete("x * x")\n```', True, True, True, False),
        ('delete("x ** x")\n```', True, True, False, False),  # not in the file
        ("rename cube\n```", True, False, False, False),
        ('retain("def")\n```', True, True, False, False),  # changes nothing
        ('delete("x")', False, False, False, False),
    ],
)
def test_a_block_is_judged_closed_parsed_applied_and_exact(output, closed, parses, applies, exact):
    outcome = judge(SNIPPET, output)
    assert (outcome.closed, outcome.parses, outcome.applies, outcome.exact) == (closed, parses, applies, exact)
    assert (outcome.error is None) == applies


@pytest.mark.slow
def test_the_command_reports_each_mode_and_speculation_equal_to_plain(tmp_path, capsys):
    from evals.command import grounded_main

    assert grounded_main(["--limit", "1", "--max-tokens", "24", "--json", str(tmp_path / "g.json")]) == 0
    out = capsys.readouterr().out
    assert "on (cursor drafter)" in out and "equals grounded plain output on every case: yes" in out
    report = json.loads((tmp_path / "g.json").read_text())
    assert report["summary"]["speculative_equals_plain"] is True
    assert [len(report["cases"][mode]) for mode in ("off", "on", "on-plain")] == [1, 1, 1]
