import subprocess
import sys
import threading

import pytest
import torch

from decoding.engine import threads
from decoding.engine.generation import generate
from decoding.engine.target import GemmaTarget
from decoding.engine.threads import ThreadPolicy, busy_elsewhere, choose_threads, pin_threads


@pytest.fixture(autouse=True)
def _unpinned():
    """Each test starts unpinned, whatever ran before it in this process, and leaves no pin behind."""
    before = torch.get_num_threads()
    pin_threads(None)
    yield
    pin_threads(None)
    torch.set_num_threads(before)


@pytest.mark.parametrize(("busy", "expected"), [(0, 4), (1, 3), (3, 1), (9, 1)])
def test_the_engine_takes_the_cores_other_work_leaves(monkeypatch, busy, expected):
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: busy)
    assert choose_threads() == expected
    pin_threads(3)
    assert choose_threads() == 3
    with pytest.raises(ValueError, match="threads must be >= 1"):
        pin_threads(0)


def test_a_spinning_process_counts_as_busy():
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_elsewhere(samples=9) >= 1
    finally:
        child.kill()
        child.wait()


def test_the_policy_looks_again_only_after_its_interval(monkeypatch):
    looks = []
    monkeypatch.setattr(threads, "choose_threads", lambda: looks.append(1) or 1)
    policy = ThreadPolicy(recheck_s=60)
    policy.update()
    policy.update()
    assert len(looks) == 1 and torch.get_num_threads() == 1
    ThreadPolicy(recheck_s=0).update()
    assert len(looks) == 2


def test_a_generation_sets_the_count_in_the_thread_that_runs_the_model(tiny_gemma):
    """OpenMP keeps the team size per thread: a count set in another thread after this one started does not reach
    it, so the engine sets it where the forwards run (the server's worker thread)."""
    seen, started, pinned = [], threading.Event(), threading.Event()

    class Recording(GemmaTarget):
        def forward(self, tokens):
            seen.append(torch.get_num_threads())
            return super().forward(tokens)

    def work():
        torch.ones(1 << 22).sum()  # this thread's first parallel op: it takes the count of that moment
        started.set()
        pinned.wait()
        generate(Recording(tiny_gemma), [5, 6, 7], 4)

    torch.set_num_threads(2)
    worker = threading.Thread(target=work)
    worker.start()
    started.wait()
    pin_threads(1)
    torch.set_num_threads(1)
    pinned.set()
    worker.join()
    assert seen and set(seen) == {1}
