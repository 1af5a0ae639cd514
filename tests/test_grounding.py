"""Grounded decoding: inside an ```edit block only a well-formed script whose quotes the file has can be written."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoding.engine.grounding import EditGrounding, ReplyFollower, ScriptFollower, opens_edit_block
from tools.ot_script import parse_script
from tools.patch import apply_edit

slow = pytest.mark.slow
SOURCE = "def cube(x):\r\n    return x * x * x\r\n\r\n\r\ndef square(x):\r\n    return x * x\r\n"


def reads(text: str, source: str | None = SOURCE) -> bool:
    """Whether a fresh block allows `text` (read in one piece and character by character alike)."""
    whole = ScriptFollower(source).feed(text) is not None
    follower = ScriptFollower(source)
    stepwise = all(follower.feed(char) is not None for char in text)
    assert whole == stepwise, text
    return whole


def test_names_and_escapes_have_no_dead_ends():
    assert reads("retai") and reads("retain(") and reads("[retain(3), insert(")
    assert not reads("retax") and not reads("replace")
    assert reads('insert("\\u00e9') and reads('insert("\\u00') and reads('insert("\\n\\t\\"')
    assert not reads('insert("\\q') and not reads('insert("\\u00g')
    # inside a quote an escape begun must be able to end as a character the file has next
    assert reads('retain("def cube(x):\\r\\n\\u002') and reads('retain("def cube(x):\\r\\n\\u0020')  # a space
    assert not reads('retain("def cube(x):\\r\\n\\u00a') and not reads('retain("def cube(x):\\r\\n\\ud8')


def test_whitespace_only_between_operations_and_not_without_end():
    assert reads("retain(3)\n\n    delete(1)")
    assert not reads("retain(3)\n\n\n") and not reads("retain(3)" + " " * 33)
    assert not reads("retain( 3") and not reads('retain("def" ') and not reads("retain (")
    assert reads('insert("' + " " * 100)  # inside a string it is text


def test_quotes_are_the_files_text():
    assert reads('retain("def cube(x):\\r\\n    return ")\ndelete("x * x * x")\ninsert("x ** 3")\n')
    assert not reads('retain("def cube(x):\\r\\n    return ")\ndelete("third')  # not in the file
    assert not reads('retain("def cube(x):\\n')  # the file has CRLF
    assert reads('retain("def cube(x):\r\n')  # a raw CR LF inside the string is the file's text too
    assert not reads('delete("def cube")\ndelete("def c')  # nothing before a deletion can be quoted again


def test_a_quote_far_from_the_cursor_closes_only_where_it_is_unique():
    source = "x = 0\n" + "#" * 50 + "\nfoo()\n" + "#" * 10 + "\nfoo()\n"
    assert not reads('retain("foo()")', source)  # twice, neither near the cursor: the applier cannot tell which
    assert reads('retain("foo()\\n#")', source)  # once
    assert reads('retain(56)\nretain("foo()")', source)  # near the cursor: the nearest is meant


def test_counts_never_run_past_the_end():
    size = len(SOURCE)
    assert reads(f"retain({size})") and reads(f"retain({size - 1})\ndelete(1)")
    assert not reads(f"retain({size + 1}") and not reads(f"retain({size})\ndelete(1")
    assert reads("retain(99999999999)", source=None)  # without the file only the syntax is checked


def test_a_fence_ends_a_block_only_between_operations():
    reply = ReplyFollower(SOURCE)
    assert reply.read("Renaming.\n```edit m.py\nretain(3)\n") and reply.block is not None
    assert reply.fork().read("```\nfree text: delete(\"anything\")")
    assert not reply.fork().read('delete("x")```')
    assert not reply.fork().read('insert("a\n```')  # the agent's protocol would end the block inside the string
    closed = reply.fork()
    assert closed.read("```\n") and closed.block is None and closed.blocks == 1


def test_blocks_for_another_path_get_the_syntax_rules_only():
    reply = ReplyFollower(SOURCE, path="m.py")
    assert reply.read("```edit other.py\n") and reply.block is not None and reply.block.source is None
    assert reply.fork().read('delete("not in m.py")')
    assert not reply.fork().read("delete(x")
    reply = ReplyFollower(SOURCE, path="m.py")
    assert reply.read("```edit m.py\n") and not reply.read('delete("not in m.py")')


def test_a_prompt_that_ends_inside_an_edit_block_opens_it():
    example = '```edit a.py\nretain("x = ")\n```\n'
    assert opens_edit_block(f"{example}Now m.py:\n```edit m.py\n")
    assert opens_edit_block("```edit m.py\nretain(3)\n")
    assert not opens_edit_block(example) and not opens_edit_block("```read m.py\n")


@st.composite
def grounded_scripts(draw):
    """A file and a script written piece by piece, each piece one the grounding allows."""
    source = draw(st.text(alphabet="ab \n", min_size=1, max_size=40))
    follower = ScriptFollower(source)
    script = ""
    for _ in range(draw(st.integers(1, 40))):
        at = draw(st.integers(0, len(source)))
        quote = json.dumps(source[at : at + draw(st.integers(1, 6))])[1:]
        pieces = ["retain(", "delete(", "insert(", '"', ")", "\n", ",", *"0123456789", quote, quote[:-1], "ab", "\\n"]
        allowed = [piece for piece in pieces if follower.fork().feed(piece) is not None]
        if not allowed:
            break
        piece = draw(st.sampled_from(allowed))
        assert follower.feed(piece) is not None
        script += piece
    return source, script, follower.parser.ops


def placed_by_the_applier(case):
    source, script, ops = case
    edit = apply_edit(source, ops, None)  # raises EditRefused where grounding let a bad op through
    assert isinstance(edit.after, str), script


test_every_op_the_grounding_allowed_is_placed_by_the_applier = settings(
    derandomize=True, max_examples=200, deadline=None
)(given(grounded_scripts())(placed_by_the_applier))
test_many_more_scripts_the_grounding_allowed_are_placed_by_the_applier = slow(
    settings(derandomize=True, max_examples=1000, deadline=None)(given(grounded_scripts())(placed_by_the_applier))
)


# -- with the tokenizer: the token-level questions -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from decoding.engine.tokenizer import tokenizer_dir

    return AutoTokenizer.from_pretrained(tokenizer_dir())


@pytest.fixture(scope="module")
def vocab(tokenizer):
    from decoding.engine.grounding import vocabulary

    return vocabulary(tokenizer)


def grounding_after(vocab, tokenizer, written: str, stops=frozenset({1})) -> EditGrounding:
    grounding = EditGrounding(vocab, SOURCE, stops, prompt_tail="Task: cube to a power.\n```edit m.py\n")
    for token in tokenizer(written, add_special_tokens=False).input_ids:
        assert grounding.allows(token), written
        grounding.advance(token)
    return grounding


def test_token_texts_join_to_the_decoded_text(tokenizer, vocab):
    text = 'retain("def foo\\n")\n\tx  = 1 é ☃\r\n```'
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert "".join(vocab.texts[i] for i in ids) == tokenizer.decode(ids) == text


def test_the_targets_choice_is_replaced_by_the_best_allowed_token(tokenizer, vocab):
    import torch

    grounding = grounding_after(vocab, tokenizer, 'retain("def cube(x):\\r\\n    return ")\ndelete("')
    logits = torch.zeros(len(vocab.texts))
    third, x = (tokenizer(t, add_special_tokens=False).input_ids[0] for t in ("third", "x"))
    logits[third], logits[x] = 5.0, 1.0
    assert not grounding.allows(third) and not grounding.allows(1)  # no stop inside a quote
    assert grounding.best_allowed(logits) == x
    assert grounding_after(vocab, tokenizer, "retain(3)\n").allows(1)  # a stop between operations is allowed
    assert grounding.stats.constrained_tokens == 1 and grounding.stats.blocks == 1


@slow
@pytest.mark.parametrize(
    "written",
    ["", 'retain("def cube(x):\\r\\n    return ")\ndelete("', 'retain(3)\ninsert("x'],
)
def test_allowed_tokens_are_exactly_the_tokens_allowed_one_by_one(tokenizer, vocab, written):
    grounding = grounding_after(vocab, tokenizer, written)
    every = {token for token in range(len(vocab.texts)) if grounding.allows(token)}
    assert set(grounding.allowed_tokens()) == every


# -- the engine: grounded speculative decoding is grounded plain decoding ------------------------------------------

FEW_SHOT = (
    'Edit scripts change files. retain("text") keeps text, delete("text") removes it, insert("text") adds it.\n\n'
    'File a.py:\nx = 1\ny = 2\nTask: set y to 3.\n```edit a.py\nretain("x = 1\\ny = ")\ndelete("2")\ninsert("3")\n'
    "```\n\nFile m.py:\n{source}Task: rename cube to third_power.\n```edit m.py\n"
)


@slow
def test_grounded_speculation_equals_grounded_plain_decoding_and_every_block_applies(embedded_model):
    from decoding.drafting.drafters import make_drafter
    from decoding.engine.generation import generate
    from decoding.engine.grounding import vocabulary
    from decoding.engine.target import make_target

    tokenizer, target = embedded_model.tokenizer, make_target(embedded_model.model)
    source = SOURCE.replace("\r\n", "\n")
    prompt = FEW_SHOT.format(source=source)
    ids, stops = tokenizer(prompt).input_ids, frozenset({1, 106})
    outputs, forwards = {}, {}
    for method in ("off", "ngram", "cursor"):
        grounding = EditGrounding(vocabulary(tokenizer), source, stops, prompt_tail=prompt)
        generation = generate(
            target, ids, 40, drafter=make_drafter(method, tokenizer=tokenizer), stop_ids=stops, grounding=grounding,
            sources=[tokenizer(source, add_special_tokens=False).input_ids], source_text=source,
        )
        outputs[method], forwards[method] = generation.tokens, generation.stats.target_forwards
    assert outputs["ngram"] == outputs["off"] == outputs["cursor"]
    assert forwards["ngram"] < forwards["off"]
    script = tokenizer.decode(outputs["off"]).split("```")[0]
    apply_edit(source, parse_script(script), None)  # the model's own block, closed: parses and applies
