"""`agent eval`'s command line: every invocation README.md shows parses (or names the form that replaced it),
each option means one thing, and --quick sets only what is not given, saying what it set."""

import shlex

import pytest

from evals.command import (
    FREE_RUNNING_TOKENS,
    QUICK_DRAFTERS,
    QUICK_FREE_RUNNING_TOKENS,
    QUICK_HELP,
    QUICK_LANGUAGES,
    parse,
    parse_grounded,
    quick_decode_formats,
    settings,
    usage_problem,
)
from evals.run import OT_TRIALS, OT_TRIALS_QUICK
from tui.cli import find_command

DEV = "evals/data/edits-dev.jsonl"
# Every `agent eval …` README.md and docs/ show (placeholders filled in), and None where it parses as it is, else
# what its usage error names instead.
README_INVOCATIONS = {
    "agent eval": None,
    "agent eval --quick": None,
    "agent eval --model hosted_vllm/gemma4 --api-base http://127.0.0.1:8000/v1 --json OUT": None,
    f"agent eval --cases {DEV} --drafters none": None,
    "agent eval --from-git REPO --save-cases FILE --formats whole,search-replace,udiff,ot,ot-counts,ot-lines": None,
    "agent eval --drafters off,ngram,cursor --decode-formats search-replace,udiff,ot": None,
    "agent eval --stratify 40 --whole-cases 10 --forwards-only --draft-tokens 16 --limit 20": None,
    "agent eval --limit 3 --quick --json OUT --plot OUT.png": None,
    "agent eval --json OUT --resume": None,
    f"agent eval --cases {DEV} --forwards-only --decode-formats search-replace,udiff,ot --formats "
    "search-replace,udiff,ot --json OUT": None,
    f"agent eval --cases {DEV} --forwards-only --decode-formats search-replace,udiff,ot --formats "
    "search-replace,udiff,ot --draft-tokens 16 --json OUT": None,
    f"agent eval --cases {DEV} --stratify 40 --whole-cases 10 --decode-formats search-replace,udiff,ot,whole "
    "--drafters ngram,cursor,hybrid --max-tokens 0 --json OUT --resume": "--free-running-tokens N",
    f"agent eval --cases {DEV} --decode-formats ot --max-tokens 0 --json OUT --plot OUT.png": "--free-running-tokens N",
    "agent eval --max-tokens 0": "--free-running-tokens N",
    "agent eval --grounding": "agent eval grounded",
    # the forms that replace them
    f"agent eval --cases {DEV} --decode-formats ot --free-running-tokens 0 --json OUT --plot OUT.png": None,
    "agent eval --model embedded --live-max-tokens 512": None,
    "agent eval grounded": None,
    "agent eval grounded --limit 3 --max-tokens 64 --json OUT": None,
}


@pytest.mark.parametrize(("invocation", "replaced_by"), README_INVOCATIONS.items())
def test_every_readme_invocation_parses_or_names_its_new_form(invocation, replaced_by, capsys):
    words = shlex.split(invocation)[1:]
    command = find_command(words)
    assert command is not None and command.words in (("eval",), ("eval", "grounded"))
    argv = words[len(command.words):]
    if replaced_by is None:
        args = parse(argv) if command.words == ("eval",) else parse_grounded(argv)
        assert command.words == ("eval", "grounded") or usage_problem(args) is None
        return
    with pytest.raises(SystemExit) as stopped:
        parse(argv)
    assert stopped.value.code == 2 and replaced_by in capsys.readouterr().err


def test_the_retired_options_fail_through_the_agent_command(capsys):
    from tui.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["eval", "--grounding", "--limit", "1", "--max-tokens", "24"])
    assert stopped.value.code == 2
    assert "--grounding: the grounded-decoding eval is its own command: agent eval grounded" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--max-tokens=64"])
    err = capsys.readouterr().err
    assert all(form in err for form in ("--free-running-tokens", "--live-max-tokens", "agent eval grounded"))


def test_quick_sets_what_is_not_given_and_its_help_says_what():
    plain, quick = settings(parse([])), settings(parse(["--quick"]))
    assert (plain.ot_trials, plain.free_running_tokens, plain.languages, plain.workloads) == (
        OT_TRIALS, FREE_RUNNING_TOKENS, None, None)
    assert (quick.drafters, quick.decode_formats, quick.free_running_tokens) == (
        QUICK_DRAFTERS, quick_decode_formats(), QUICK_FREE_RUNNING_TOKENS)
    assert (quick.ot_trials, quick.languages, quick.whole_shortest) == (OT_TRIALS_QUICK, QUICK_LANGUAGES, True)
    given = settings(parse(["--quick", "--drafters", "ngram", "--decode-formats", "ot", "--free-running-tokens", "0",
                            "--stratify", "3", "--whole-cases", "1"]))
    assert (given.drafters, given.decode_formats, given.free_running_tokens) == (("ngram",), ("ot",), 0)
    assert (given.stratify, given.languages, given.whole_cases, given.whole_shortest) == (3, None, 1, False)
    assert settings(parse(["--quick", "--model", "openai/m"])).drafters == ()  # --model: formats and live only
    decode_formats = ",".join(quick_decode_formats())
    for set_by_quick in (f"--drafters {','.join(QUICK_DRAFTERS)}", f"--decode-formats {decode_formats}",
                         f"--free-running-tokens {QUICK_FREE_RUNNING_TOKENS}", f"each of {QUICK_LANGUAGES} languages",
                         f"{OT_TRIALS_QUICK} miscount perturbation per OT script", "copy-heavy free-running workload"):
        assert set_by_quick in QUICK_HELP


def test_the_run_says_its_settings_on_one_line(tmp_path, monkeypatch, capsys):
    from test_evals_decode import fake_decoding

    from evals.command import main

    fake_decoding(monkeypatch, [])
    assert main(["--quick", "--drafters", "off,ngram", "--free-running-tokens", "0"]) == 0
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("agent eval:")]
    assert line == (f"agent eval: drafters off,ngram; decoding {','.join(quick_decode_formats())} on the first case of "
                    f"each of {QUICK_LANGUAGES} languages, whole files on the shortest; 1 miscount perturbation per OT "
                    "script; no free-running workloads")
    assert OT_TRIALS_QUICK == 1


@pytest.mark.parametrize(("argv", "problem"), [
    (["--free-running-tokens", "-1"], "--free-running-tokens must be at least 0, not -1"),
    (["--live-max-tokens", "0"], "--live-max-tokens must be at least 1, not 0"),
])
def test_token_limits_are_checked(argv, problem, capsys):
    from evals.command import main

    assert main(argv) == 2 and problem in capsys.readouterr().err
