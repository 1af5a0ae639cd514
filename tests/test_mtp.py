"""The MTP drafter head: its files are checked, it drafts what the target would say, hybrid chooses arms."""

import json
import time

import pytest
import torch

from decoding.drafting.base import Draft, DraftContext, NgramDrafter
from decoding.drafting.drafters import HybridDrafter, make_drafter
from decoding.drafting.mtp import (
    DEFAULT_MANIFEST,
    MTPConfig,
    MTPDrafter,
    MTPError,
    MTPHead,
    SharedHead,
    chain_mask,
    load_head,
    save_head,
    sha256_file,
)
from decoding.engine.generation import generate
from decoding.engine.target import make_target
from decoding.lab.workloads import code_continuation, standard_workloads

slow = pytest.mark.slow
V, D = 64, 32


def tiny_head(window: int = 16) -> MTPHead:
    torch.manual_seed(0)
    head = MTPHead(MTPConfig(dim=D, n_heads=2, head_dim=8, hidden_dim=48, window=window), torch.arange(0, V, 2))
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return head.eval().requires_grad_(False)


def tiny_drafter(head: MTPHead, embed: torch.Tensor) -> MTPDrafter:
    return MTPDrafter(SharedHead(head, embed, embed, {}, dtype=torch.float32), k_max=5)


def test_chain_mask_sees_the_target_fed_prefix_and_its_own_chain():
    mask = chain_mask(5, 3)  # query p of step 3 started its chain at s = p - 2
    p = 4
    assert mask[p, :5].tolist() == [True, True, True, False, False]  # target-fed keys up to s = 2
    assert mask[p, 5:10].tolist() == [False, False, False, True, False]  # step 2 of the same chain, at p - 1
    assert mask[p, 10:].tolist() == [False, False, False, False, True]  # itself
    assert chain_mask(4, 1).tolist() == torch.ones(4, 4).tril().bool().tolist()


def test_drafting_from_the_cache_matches_the_training_time_chain():
    head, embed = tiny_head(), torch.randn(V, D)
    tokens = torch.randint(0, V, (12,)).tolist()
    hidden = torch.randn(11, D)  # the target's rows for positions 0..10; tokens[11] is pending
    draft = tiny_drafter(head, embed).propose(DraftContext(tokens, hidden=hidden, limit=4), 1).tokens
    assert len(draft) == 4
    # Training-time unrolling over the same text followed by the draft: chain from s = 10, step j at 10 + j - 1.
    sequence = tokens + draft
    features = torch.cat([hidden, torch.randn(len(draft), D)])  # rows after s are never read by that chain
    outs = head.unrolled(features[None], embed[torch.tensor(sequence[1:])][None], 4)
    chained = [int(head.token_ids[(outs[j][0, 10 + j] @ embed[head.token_ids].T).argmax()]) for j in range(4)]
    assert chained == draft


def test_incremental_observing_with_rollback_equals_one_shot():
    head, embed = tiny_head(window=8), torch.randn(V, D)
    tokens = torch.randint(0, V, (30,)).tolist()
    hidden = torch.randn(29, D)  # rows for positions 0..28
    one_shot = tiny_drafter(head, embed).propose(DraftContext(tokens, hidden=hidden, limit=3), 1).tokens
    stepwise = tiny_drafter(head, embed)
    # As in the engine: a prefill of 12 rows, then steps that verify 1..5 rows each; each step's draft sits in the
    # head's cache until the next call rolls it back.
    lengths = [13, 14, 18, 20, 25, 30]
    previous = 1
    for length in lengths:
        draft = stepwise.propose(DraftContext(tokens[:length], hidden=hidden[previous - 1 : length - 1], limit=3), 1)
        previous = length
    assert draft.tokens == one_shot


def test_hybrid_copies_matches_and_otherwise_asks_the_head():
    head, embed = tiny_head(), torch.randn(V, D)
    hybrid = HybridDrafter(source=NgramDrafter(n_min=3), mtp=tiny_drafter(head, embed))
    source = [5, 6, 7, 8, 9, 10, 11]
    copied = hybrid.propose(DraftContext([1, 5, 6, 7], [source], hidden=torch.randn(3, D)), 3)
    assert (copied.tokens, copied.source) == ([8, 9, 10], "ngram")
    guessed = hybrid.propose(DraftContext([1, 5, 6, 7, 40], [source], hidden=torch.randn(1, D)), 1)
    assert guessed.source == "mtp" and len(guessed.tokens) == 5  # the head sizes its drafts: k_max, not k
    assert make_drafter("auto").mtp is None  # no target: prompt lookup alone
    assert make_drafter("auto").propose(DraftContext([1, 5, 6, 1, 5]), 2).tokens == [6, 1]  # down to 2-token matches
    with pytest.raises(MTPError, match="needs the target"):
        make_drafter("mtp")


def test_hybrid_keeps_a_copied_draft_sized_by_its_drafter():
    class Sized:
        name = "cursor"

        def propose(self, context: DraftContext, k: int) -> Draft:
            return Draft([4, 5, 6, 7, 8], self_sized=True)  # longer than k: the engine must not cut it to k

    draft = HybridDrafter(source=Sized()).propose(DraftContext([1, 2]), 2)
    assert draft.tokens == [4, 5, 6, 7, 8] and draft.self_sized and draft.source == "cursor"


def test_hybrid_asks_the_head_only_where_nothing_is_copied_and_retries_the_losing_arm():
    head, embed = tiny_head(), torch.randn(V, D)
    hybrid = make_drafter("hybrid")
    assert isinstance(hybrid, HybridDrafter)
    hybrid.mtp = tiny_drafter(head, embed)
    assert hybrid._choose() == "mtp"  # each arm is measured first
    hybrid.rates["mtp"] = 1.0
    assert hybrid._choose() == "plain"
    hybrid.rates = {"mtp": 10.0, "plain": 30.0}
    picks = [hybrid._choose() for _ in range(30)]  # choices 3 to 32
    assert [i + 3 for i, arm in enumerate(picks) if arm == "mtp"] == [4, 8, 16, 32]  # the slower arm, ever rarer
    hybrid._previous = (time.perf_counter() - 0.5, 10, "mtp")
    hybrid._score(30)  # that step emitted 20 tokens in a little over 0.5 s
    assert 17.0 < hybrid.rates["mtp"] < 17.5  # a moving average: 0.75 * 10 + 0.25 * (about 40)
    # A 2-token match is copied even while the head pays better: asked in front of short matches, the head
    # displaced copies that would have been accepted (ot-edit:bisect took 46 forwards against cursor's 38).
    hybrid.rates, hybrid._choices = {"mtp": 30.0, "plain": 10.0}, 2
    short = DraftContext([1, 5, 6, 1, 5], hidden=torch.randn(1, D))
    copied = hybrid.propose(short, 2)
    assert (copied.tokens, copied.source) == ([6, 1], "ngram")
    nothing = DraftContext([1, 5, 6, 1, 5, 9], hidden=torch.randn(1, D))
    assert hybrid.propose(nothing, 2).source == "mtp"  # nothing to copy: the arm that pays
    hybrid.rates, hybrid._choices, hybrid._previous = {"mtp": 10.0, "plain": 30.0}, 4, (0.0, 0, None)
    assert hybrid.propose(DraftContext([1, 5, 6, 1, 5, 9, 9], hidden=torch.randn(1, D)), 2).tokens == []  # plain


def test_save_load_checks_the_sha256_and_the_target(tmp_path):
    head, embed = tiny_head(), torch.randn(V, D)
    target = {"name": "tiny", "vocab_size": V, "dim": D, "embedding_fingerprint": []}
    manifest_path = tmp_path / "head.json"
    from decoding.drafting.mtp import embedding_fingerprint

    target["embedding_fingerprint"] = embedding_fingerprint(embed)
    manifest = save_head(head, manifest_path, target, {"steps": 0})
    loaded, _ = load_head(manifest_path, embed.to(torch.bfloat16))  # a bfloat16 copy of the same target fits
    assert torch.equal(loaded.token_ids, head.token_ids)
    with pytest.raises(MTPError, match="embedding differs"):
        load_head(manifest_path, torch.randn(V, D))
    with pytest.raises(MTPError, match="vocabulary 65"):
        load_head(manifest_path, torch.randn(V + 1, D))
    weights = tmp_path / manifest["weights"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(MTPError, match="sha256"):
        load_head(manifest_path, embed)
    with pytest.raises(MTPError, match="no MTP head manifest"):
        load_head(tmp_path / "missing.json")


def test_the_shipped_head_matches_its_manifest():
    manifest = json.loads(DEFAULT_MANIFEST.read_text())
    weights = DEFAULT_MANIFEST.parent / manifest["weights"]
    assert weights.stat().st_size <= 25 << 20
    assert sha256_file(weights) == manifest["sha256"]
    assert manifest["target"]["name"] == "gemma-3-270m" and manifest["target"]["gguf_sha256"]
    held_out = manifest["training"]["held_out"]
    assert len(held_out["acceptance_at"]) >= 4 and held_out["positions"] > 1000


@pytest.fixture(scope="module")
def target(embedded_model):
    return make_target(embedded_model.model)


HELD_OUT_CODE, OT_EDIT = code_continuation(), standard_workloads()[2]


@pytest.fixture(scope="module")
def plain_outputs(embedded_model, target):
    return {
        w.name: generate(target, embedded_model.tokenizer(w.prompt).input_ids, 40) for w in (HELD_OUT_CODE, OT_EDIT)
    }


@slow
@pytest.mark.parametrize("method", ["mtp", "hybrid"])
@pytest.mark.parametrize("workload", [HELD_OUT_CODE, OT_EDIT], ids=lambda w: w.name)
def test_greedy_mtp_and_hybrid_are_token_identical_to_plain(embedded_model, target, plain_outputs, method, workload):
    tok = embedded_model.tokenizer
    sources = [tok(workload.prediction, add_special_tokens=False).input_ids] if workload.prediction else []
    drafter = make_drafter(method, tokenizer=tok, target=target)
    spec = generate(target, tok(workload.prompt).input_ids, 40, drafter=drafter, sources=sources)
    assert spec.tokens == plain_outputs[workload.name].tokens
    assert spec.stats.accepted == sum(spec.stats.accepted_by.values()) > 0
    if method == "mtp" and workload is HELD_OUT_CODE:
        # Code the head never saw: drafting must pay (the manifest's teacher-forced figures predict about 1.9).
        assert set(spec.stats.accepted_by) == {"mtp"}
        assert spec.stats.mean_accepted_length > 1.5 and spec.stats.acceptance_at()[0] > 0.35
    if method == "hybrid" and workload is OT_EDIT:
        assert spec.stats.accepted_by.get("cursor", 0) > 10  # the script quotes the source: copying leads
