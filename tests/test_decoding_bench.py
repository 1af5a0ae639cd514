import pytest

from decoding.bench import PEER, bench_workload, format_table
from decoding.target import make_target
from decoding.workloads import standard_workloads


@pytest.mark.slow
def test_bench_runs_every_method_on_the_same_prompt_and_compares_outputs(embedded_model):
    workload = standard_workloads()[-1]  # free text: a short prompt keeps this quick
    rows = bench_workload(embedded_model, make_target(embedded_model.model), workload, 12, "float32", 2, lookup=10)
    assert [r.method for r in rows] == ["plain", "ngram", "cursor", PEER]
    assert all(r.tokens == 12 and r.matches_plain for r in rows)
    assert rows[0].speedup_vs_plain == 1.0 and rows[-1].ratio_vs_peer == 1.0
    assert rows[1].mean_accepted_length >= 1.0 and rows[0].mean_accepted_length == 1.0
    table = format_table(rows)
    assert "free-text" in table and "NO" not in table
