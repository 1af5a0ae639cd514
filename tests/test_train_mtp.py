"""Training the MTP head: held-out files stay held out, and a short run writes a head that loads."""

import itertools
import json
import shutil
from pathlib import Path

import pytest

from decoding.drafting.mtp import load_head
from decoding.engine.target import make_target
from decoding.lab import train_mtp
from decoding.lab.workloads import standard_workloads


def test_the_benchmark_reads_only_held_out_modules():
    for workload in standard_workloads():
        if ":" in workload.name:
            assert train_mtp.is_held_out(workload.name.split(":")[1] + ".py"), workload.name


def test_the_split_is_stable_and_holds_out_about_one_stdlib_file_in_sixteen():
    train, held, other = train_mtp.split_files(train_mtp.corpus([train_mtp.stdlib_root()]))
    assert not set(train) & set(held) and not other
    assert 0.03 < len(held) / (len(train) + len(held)) < 0.12
    assert all("site-packages" not in f.path.parts for f in train)
    assert train_mtp.split_files(train_mtp.corpus([train_mtp.stdlib_root()]))[1] == held


def test_installed_projects_are_held_out_whole_and_the_evals_projects_always():
    train, held, other = train_mtp.split_files(
        train_mtp.corpus([train_mtp.stdlib_root(), *train_mtp.installed_roots()])
    )
    trained_projects = {f.project for f in train}
    other_projects = {f.project for f in other}
    assert {"rich", "click"} <= other_projects and not trained_projects & other_projects
    assert {"stdlib", "torch", "textual"} <= trained_projects
    assert 0.03 < len(other_projects) / len(trained_projects | other_projects) < 0.12
    assert all(f.project == "stdlib" or f.name in train_mtp.HELD_OUT_MODULES for f in held)


def test_files_are_drawn_across_projects_not_by_size():
    files = [train_mtp.SourceFile(Path(f"big/{i}.py"), f"big/{i}.py", "big") for i in range(900)]
    files += [train_mtp.SourceFile(Path(f"small{i}.py"), f"small{i}.py", f"small{i}") for i in range(100)]
    first = [f.project for f in itertools.islice(train_mtp.interleaved(files, seed=0), 200)]
    assert 40 < first.count("big") < 120  # 900 of 1,000 files, but weight 30 against 100 x 1
    assert [f.name for f in train_mtp.interleaved(files, 0)] == [f.name for f in train_mtp.interleaved(files, 0)]


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
        assert not train_mtp.is_held_out(name, name.removesuffix(".py"))
        shutil.copy(root / name, source)
    (source / "click").mkdir()  # an evals project: held out whole
    shutil.copy(root / "shlex.py", source / "click" / "__init__.py")
    out = tmp_path / "head.json"
    argv = ["--source", str(source), "--out", str(out), "--steps", "2", "--tokens", "1200", "--held-out-tokens", "300"]
    argv += ["--window", "64", "--batch", "2", "--hidden-dim", "64", "--vocab", "512", "--eval-k", "3"]
    argv += ["--minutes", "3"]
    assert train_mtp.main(argv) == 0
    manifest = json.loads(out.read_text())
    assert manifest["training"]["steps"] == 2 and manifest["training"]["files"] == 2
    assert manifest["training"]["held_out_files"] == 1 and manifest["training"]["other_projects"] == ["click"]
    for held_out in (manifest["training"]["held_out"], manifest["training"]["held_out_projects"]):
        assert len(held_out["acceptance_at"]) == 3 and held_out["positions"] >= 300
    assert manifest["vocabulary_slice"] == 512 and manifest["target"]["name"] == "gemma-3-270m"
    embed, _ = make_target(embedded_model.model).embedding_tables()
    head, _ = load_head(out, embed)
    assert head.config.hidden_dim == 64 and head.token_ids.numel() == 512
    progress = capsys.readouterr().err
    assert "step 1: loss" in progress and "trained 2 steps" in progress
