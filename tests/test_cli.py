"""`agent apply`, `agent ot-diff`, `agent undo`: the contract other tools rely on."""

import io
import json
import os
import subprocess
import sys

import pytest

from tui.cli import main


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "app.go"
    path.write_text('package main\n\nfunc main() {\n\tprintln("hi")\n}\n')
    return path


def _run(monkeypatch, capsys, argv, stdin=""):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_apply_from_stdin_prints_a_diff_and_notes_corrections(monkeypatch, capsys, source):
    code, out, err = _run(monkeypatch, capsys, ["apply", str(source), "-"], 'retain(30)\ndelete("hi")\ninsert("bye")')
    assert code == 0
    assert '-\tprintln("hi")' in out and '+\tprintln("bye")' in out
    assert "moved from" in err
    assert 'println("bye")' in source.read_text()


def test_apply_json_reports_ok_and_corrections(monkeypatch, capsys, source, tmp_path):
    script = tmp_path / "edit.ot"
    script.write_text('retain(27)\ndelete("hi")\ninsert("yo")')
    code, out, _ = _run(monkeypatch, capsys, ["apply", "--json", str(source), str(script)])
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["error"] is None
    assert report["corrections"][0]["op_index"] == 1 and "+\tprintln(\"yo\")" in report["diff"]


@pytest.mark.parametrize(
    ("script", "code"),
    [("retain(3", 3), ('delete("absent text")', 3), ("retain(10000)\ndelete(1)", 3), ('retain(14)\ninsert("{{")', 4)],
)
def test_apply_exit_codes_and_file_unchanged(monkeypatch, capsys, source, script, code):
    before = source.read_bytes()
    got, out, _ = _run(monkeypatch, capsys, ["apply", "--json", str(source), "-"], script)
    assert got == code
    report = json.loads(out)
    assert report["ok"] is False and report["error"] and report["diff"] == ""
    assert source.read_bytes() == before


def test_allow_broken_and_dry_run(monkeypatch, capsys, source):
    before = source.read_bytes()
    code, out, _ = _run(monkeypatch, capsys, ["apply", "--dry-run", "--allow-broken", str(source), "-"],
                        'retain(14)\ninsert("{{")')
    assert code == 0 and "+{{func main() {" in out and source.read_bytes() == before


def test_usage_errors_exit_2(monkeypatch, capsys, tmp_path):
    code, _, err = _run(monkeypatch, capsys, ["apply", str(tmp_path / "missing.py"), "-"], "retain(1)")
    assert code == 2 and "no such file" in err
    with pytest.raises(SystemExit) as info:
        main(["apply"])
    assert info.value.code == 2


def test_ot_diff_prints_a_script_that_apply_accepts(monkeypatch, capsys, source, tmp_path):
    after = tmp_path / "after.go"
    after.write_text(source.read_text().replace('"hi"', '"hello"'))
    code, script, _ = _run(monkeypatch, capsys, ["ot-diff", str(source), str(after)])
    assert code == 0 and 'delete("' in script and 'insert("' in script
    code, _, _ = _run(monkeypatch, capsys, ["apply", str(source), "-"], script)
    assert code == 0 and source.read_text() == after.read_text()


def test_undo_reverts_the_last_apply(monkeypatch, capsys, source):
    before = source.read_bytes()
    _run(monkeypatch, capsys, ["apply", str(source), "-"], 'retain(27)\ndelete("hi")\ninsert("yo")')
    code, _out, err = _run(monkeypatch, capsys, ["undo", str(source)])
    assert code == 0 and source.read_bytes() == before and "restored" in err
    code, _, err = _run(monkeypatch, capsys, ["undo"])
    assert code == 1 and "nothing to undo" in err


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "tui.cli", "--help"], capture_output=True, text=True).stdout
    for command in ("apply", "ot-diff", "undo", "bench", "serve", "eval", "export-embedded", "run"):
        assert command in out


def test_every_command_names_a_main_that_exists():
    """The table names each command's function as text (imported when it runs): a renamed one fails here."""
    from tui import cli

    for command in cli.COMMANDS:
        if isinstance(command.target, str):
            assert callable(cli._entry(command.target)), command.words


def test_help_does_not_import_the_commands():
    """`agent --help` stays instant: no subcommand's module is imported to list them."""
    probe = "import sys; from tui.cli import main; main(['--help']); print(sorted(m for m in sys.modules " \
            "if m.split('.')[0] in ('agent', 'decoding', 'evals', 'textual', 'torch')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_serve_dispatches_by_engine(capsys):
    assert main(["serve", "--engine", "vllm", "--model", "google/gemma-4-E2B-it", "--print-command"]) == 0
    assert "--speculative-config" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0 and "--dtype" in capsys.readouterr().out


@pytest.mark.slow
def test_export_embedded_writes_a_loadable_directory(tmp_path, capsys, embedded_model):
    out = tmp_path / "gemma"
    assert main(["export-embedded", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").exists()
    assert "<start_of_turn>" in json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    assert main(["export-embedded", str(out)]) == 2 and "not empty" in capsys.readouterr().err


def test_bench_decode_is_delegated_with_its_own_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "decode", "--help"])
    assert info.value.code == 0 and "agent bench decode" in capsys.readouterr().out


def test_eval_grounded_is_its_own_command_and_eval_keeps_its_own_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "grounded", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "usage: agent eval grounded" in out and "--max-tokens N" in out
    with pytest.raises(SystemExit) as info:
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "--free-running-tokens" in out and "--grounding" not in out.split("examples:")[0]
    assert main(["eval", "grounded", "--limit", "0"]) == 2
    assert "agent eval grounded: --limit must be at least 1, not 0" in capsys.readouterr().err


def test_a_mistyped_command_is_named_with_the_nearest_one(capsys):
    assert main(["evl"]) == 2
    assert "did you mean `agent eval`" in capsys.readouterr().err


def test_a_command_group_alone_lists_its_commands(capsys):
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "bench apply" in err and "bench decode" in err


def test_help_piped_into_a_reader_that_stops_early_is_no_traceback(monkeypatch):
    """`agent --help | head -1`: the pipe closes under the help; that is the reader's choice, not an error."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone
    closed_pipe = io.TextIOWrapper(os.fdopen(write_end, "wb", buffering=0), write_through=True)
    monkeypatch.setattr(sys, "stdout", closed_pipe)
    assert main(["--help"]) == 0
