"""`agent bench held-out`: files from projects the MTP head never trained on, continued through the server."""

import threading

import pytest

from decoding.lab import held_out
from decoding.lab.train_mtp import EVAL_PROJECTS, is_held_out
from decoding.serving.server import Service, make_server


def test_the_files_are_code_from_held_out_projects_and_the_choice_is_stable():
    files = held_out.held_out_files(6)
    assert len(files) == 6 and files == held_out.held_out_files(6)
    for f in files:
        assert f.project in EVAL_PROJECTS and is_held_out(f.name, f.project)
        assert held_out.is_code(f.path.read_text())
    assert not held_out.is_code("TABLE = [\n" + "    (1, 2),\n" * 200 + "]\n")


def test_bad_counts_are_usage_errors(capsys):
    assert held_out.main(["--files", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_every_method_is_measured_through_the_server_and_matches_plain_text(embedded_model):
    server = make_server(Service(embedded_model), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        rows = held_out.measure(url, held_out.held_out_files(1), ["off", "ngram"], 12, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    off, ngram = rows
    assert off.tokens == ngram.tokens == 12 and off.steps == 11 and off.mean_accepted_length == 1.0
    assert ngram.steps + ngram.accepted == 11 and ngram.matches_plain
    table = held_out.format_table(rows)
    assert "| ngram | 12 |" in table and "text = off" in table
