"""Training the MTP head: held-out files stay held out, and a short run writes a head that loads."""

import json
import shutil

import pytest

from decoding.drafting.mtp import load_head
from decoding.engine.target import make_target
from decoding.lab import train_mtp
from decoding.lab.workloads import standard_workloads


def test_the_benchmark_reads_only_held_out_modules():
    for workload in standard_workloads():
        if ":" in workload.name:
            assert train_mtp.is_held_out(workload.name.split(":")[1] + ".py"), workload.name


def test_the_split_is_stable_and_holds_out_about_one_file_in_sixteen():
    train, held = train_mtp.split_files(train_mtp.stdlib_root())
    assert not set(train) & set(held)
    assert 0.03 < len(held) / (len(train) + len(held)) < 0.12
    assert all("site-packages" not in p.parts for p in train)


def test_bad_budgets_are_refused(capsys):
    assert train_mtp.main(["--minutes", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_training_run_writes_a_loadable_head_with_its_manifest(tmp_path, embedded_model, capsys):
    root = train_mtp.stdlib_root()
    source = tmp_path / "lib"
    source.mkdir()
    shutil.copy(root / "bisect.py", source)  # held out by name
    for name in ("heapq.py", "queue.py"):
        assert not train_mtp.is_held_out(name)
        shutil.copy(root / name, source)
    out = tmp_path / "head.json"
    argv = ["--source", str(source), "--out", str(out), "--steps", "2", "--tokens", "1200", "--held-out-tokens", "300"]
    argv += ["--window", "64", "--batch", "2", "--hidden-dim", "64", "--vocab", "512", "--eval-k", "3"]
    argv += ["--minutes", "3"]
    assert train_mtp.main(argv) == 0
    manifest = json.loads(out.read_text())
    assert manifest["training"]["steps"] == 2 and manifest["training"]["files"] == 2
    assert manifest["training"]["held_out_files"] == 1
    held_out = manifest["training"]["held_out"]
    assert len(held_out["acceptance_at"]) == 3 and held_out["positions"] >= 300
    assert manifest["vocabulary_slice"] == 512 and manifest["target"]["name"] == "gemma-3-270m"
    embed, _ = make_target(embedded_model.model).embedding_tables()
    head, _ = load_head(out, embed)
    assert head.config.hidden_dim == 64 and head.token_ids.numel() == 512
    progress = capsys.readouterr().err
    assert "step 1: loss" in progress and "trained 2 steps" in progress

