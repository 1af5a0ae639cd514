"""Grounded decoding: inside an ```edit block only a well-formed script whose quotes the file has can be written."""

import json
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoding.engine.grounding import EditGrounding, GroundingStats
from tools.grounding.reply import ReplyFollower, opens_edit_block
from tools.grounding.script import ScriptFollower
from tools.grounding.search_replace import SearchReplaceFollower
from tools.grounding.udiff import UdiffFollower
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


# -- search/replace and udiff blocks: old lines are whole lines of the file, in order -------------------------------

LINES = "def cube(x):\n    return x * x * x\n\n\ndef square(x):\n    return x * x\n\n\ndef same(x):\n    return x\n"
TWICE = "def f(x):\n    return x\n\ndef g(x):\n    return x\n"  # the return line is there twice


def block_reads(tool: str, text: str, source: str | None = LINES) -> bool:
    """Whether a fresh ```TOOL block allows `text`, read in one piece, character by character and in pieces of
    three alike."""
    follower = {"search-replace": SearchReplaceFollower, "diff": UdiffFollower}[tool]
    whole = follower(source).feed(text) is not None
    for size in (1, 3):
        split = follower(source)
        assert whole == all(split.feed(text[at : at + size]) is not None for at in range(0, len(text), size)), text
    return whole


def sr(text: str, source: str | None = LINES) -> bool:
    return block_reads("search-replace", text, source)


def udiff(text: str, source: str | None = LINES) -> bool:
    return block_reads("diff", text, source)


def test_search_lines_are_whole_lines_of_the_file_in_order():
    block = "<<<<<<< SEARCH\ndef cube(x):\n    return x * x * x\n=======\ndef cube(x):\n    return x ** 3\n"
    block += ">>>>>>> REPLACE\n"
    assert sr(block) and sr(block + "\n\n" + block.replace("cube", "square").replace(" * x\n=", "\n="))
    assert sr("<<<<<<< SEARCH\n    return x * x")  # a prefix of two lines of the file
    assert not sr("<<<<<<< SEARCH\n  return") and not sr("<<<<<<< SEARCH\n\treturn")  # indentation not the file's
    assert not sr("<<<<<<< SEARCH\n    return x * x * x ")  # trailing whitespace the file does not have
    assert not sr("<<<<<<< SEARCH\ndef cube(x):\ndef")  # the next line of the file is not a def
    assert not sr("<<<<<<< SEARCH\n    return x * x * x\n    return x * x\n")  # lines of the file, not consecutive
    assert not sr("<<<<<<< SEARCH\n=")  # the divider only after a SEARCH line
    assert not sr("Here:\n") and not sr("<<<<<<< SEARCH \n") and not sr("\n\n\n")  # only markers between blocks
    assert not sr(block.replace("=======\n", "======= \n"))  # the parser would take it for the divider
    assert not sr(block.replace(">>>>>>> REPLACE\n", ">>>>>>> REPLACE\t\n"))
    free = '  any "text"\\ \t\n```\n<<<<<<< SEARCH\n'
    assert sr("<<<<<<< SEARCH\n    return x * x * x\n=======\n" + free)  # REPLACE lines are free


def test_the_divider_waits_until_the_search_text_occurs_once():
    assert not sr("<<<<<<< SEARCH\n    return x\n=", TWICE)  # twice in the file: the applier would take the first
    assert sr("<<<<<<< SEARCH\n    return x\n\n=======\n", TWICE)  # the blank line after it is only after f's
    assert sr("<<<<<<< SEARCH\ndef g(x):\n    return x\n=======\n", TWICE)
    assert not sr("<<<<<<< SEARCH\na\na\n=", "a\na\na\n")  # at 0 and at 1: overlapping runs count
    assert sr("<<<<<<< SEARCH\na\na\na\n=", "a\na\na\n")
    assert sr("<<<<<<< SEARCH\n=======\nx = 1\n>>>>>>> REPLACE\n", "")  # an empty file takes an empty SEARCH


def test_each_block_is_grounded_in_the_file_with_the_earlier_blocks_applied():
    first = "<<<<<<< SEARCH\ndef f(x):\n    return x\n=======\ndef f(x):\n    return 2 * x\n>>>>>>> REPLACE\n"
    then = "<<<<<<< SEARCH\n    return x\n=======\n"  # once f's return is replaced, g's is the only one
    assert sr(first + "\n" + then, TWICE) and not sr(then, TWICE)
    assert sr(first + "<<<<<<< SEARCH\n    return 2 * x\n=======\n", TWICE)  # the new line is the file's now
    assert not sr(first + "<<<<<<< SEARCH\ndef f(x):\n    return x\n", TWICE)  # the old one is not
    hunk = "@@ ... @@\n def f(x):\n-    return x\n+    return 2 * x\n"
    assert udiff(hunk + "@@ ... @@\n-    return x\n+    return 3 * x\n```", TWICE)
    assert not udiff("@@ ... @@\n-    return x\n+    return 3 * x\n@", TWICE)


def test_udiff_context_and_removed_lines_are_the_files():
    hunk = "@@ ... @@\n def cube(x):\n-    return x * x * x\n+    return x ** 3\n"
    assert udiff(hunk) and udiff("--- a/m.py\n+++ b/m.py\n" + hunk + "```") and udiff("@@ -1,2 +1,2 @@\n" + hunk[10:])
    assert not udiff("@@ ... @@\n-    return x*x*x")  # a removed line the file does not have
    assert not udiff("@@ ... @@\n-  return x * x * x\n") and not udiff("@@ ... @@\n  return")  # its indentation
    assert not udiff("@@ ... @@\n def cube(x):\n def square(x):\n")  # not the next line of the file
    assert udiff("@@ ... @@\n def cube(x):\n+    '''Cubed.'''\n     return x * x * x\n")  # "+" lines are free
    assert udiff("@@ ... @@\n-    return x * x * x\n\n\n def square(x):\n")  # an empty line is blank context
    assert not udiff("@@ ... @@\n-    return x * x * x\n\n\n\n") and not udiff("@@ ... @@\nreturn")  # no sign
    assert not udiff("Here:\n") and not udiff("-x\n") and not udiff("@x")  # before the first hunk: ---, +++, @@
    assert not udiff("@@ ... @@\n@") and not udiff("@@ ... @@\n```")  # a hunk needs an old line to land
    assert not udiff("@@ ... @@\n     return x\n```", TWICE)
    assert udiff("@@ ... @@\n def g(x):\n     return x\n```", TWICE)


def test_a_fence_ends_a_line_block_only_between_blocks():
    reply = ReplyFollower(LINES)
    assert reply.read("Cubing.\n```search-replace m.py\n<<<<<<< SEARCH\n") and reply.block is not None
    assert not reply.fork().read("    return x * x * x\n```")  # inside SEARCH a backtick is the file's text: no
    closed = reply.fork()
    assert closed.read("    return x * x * x\n=======\n    return x ** 3\n>>>>>>> REPLACE\n```\nfree: <<<")
    assert closed.block is None and closed.blocks == 1
    markdown = ReplyFollower("Run:\n```python\nx = 1\n```\n")
    assert markdown.read("```search-replace README.md\n<<<<<<< SEARCH\n```python\nx = 1\n```\n=======\n```\n")
    after = markdown.fork()
    assert markdown.block is not None and after.read(">>>>>>> REPLACE\n```") and after.block is None


def test_line_blocks_for_another_path_get_the_syntax_rules_only_and_a_bare_diff_is_free():
    reply = ReplyFollower(LINES, path="m.py")
    assert reply.read("```diff other.py\n") and reply.block is not None and reply.block.source is None
    assert reply.fork().read("@@ ... @@\n-not in m.py\n+x\n```\n") and not reply.fork().read("@@ ... @@\nnot a line")
    assert not reply.fork().read("@@ ... @@\n```")  # syntax: a hunk has an old line
    other = ReplyFollower(LINES, path="m.py")
    assert other.read("```search-replace other.py\n<<<<<<< SEARCH\nnot in m.py\n=======\n")
    assert not other.fork().read(">>>>>>> REPLACE \n")
    mine = ReplyFollower(LINES, path="m.py")
    assert mine.read("```search-replace m.py\n") and mine.block is not None and mine.block.source == LINES
    assert not mine.read("<<<<<<< SEARCH\nnot in m.py")
    bare = ReplyFollower(LINES)
    assert bare.read("```diff\n-anything\n") and bare.block is None and bare.blocks == 0


def test_a_prompt_that_ends_inside_a_line_block_opens_it():
    assert opens_edit_block("Fix it.\n```diff m.py\n") and opens_edit_block("```search-replace m.py\n<<<<<<< SEARCH\n")
    assert not opens_edit_block("```diff\n") and not opens_edit_block("```diff m.py\n@@ ... @@\n-x\n```\n")


def test_each_registered_formats_fence_opens_its_follower():
    from tools.formats import formats

    for fmt in formats():
        reply = ReplyFollower(LINES, path="m.py")
        assert reply.read(f"```{fmt.fence} m.py\n")
        if fmt.follower is None:  # ```overwrite: the whole file, free
            assert reply.block is None, fmt.name
        else:
            assert isinstance(reply.block, fmt.follower) and reply.block.source == LINES, fmt.name


def test_formats_sharing_a_fence_must_share_its_follower():
    from tools.formats import Format, register, unregister
    from tools.grounding.reply import _fence_followers

    register(Format("edit-as-diff", "edit", "", lambda before, after: "", lambda before, output, language: before,
                    follower=UdiffFollower))
    try:
        with pytest.raises(ValueError, match="```edit blocks are grounded by different followers"):
            _fence_followers()
    finally:
        unregister("edit-as-diff")


# -- forks: grounding tries each token on a fork, so a fork must never touch its original ---------------------------


def takes(follower, text: str) -> bool:
    """Whether `follower` (a block's or the reply's) takes all of `text` and goes on."""
    if isinstance(follower, ReplyFollower):
        return follower.read(text)
    return follower.feed(text) == len(text)


def state(follower) -> tuple:
    """What a follower will allow next, as far as its questions show it."""
    if isinstance(follower, ReplyFollower):
        block = None if follower.block is None else (type(follower.block), state(follower.block))
        return follower.blocks, follower.line, block
    return follower.next_chars(), follower.can_stop, takes(follower.fork(), "\n")


FORKS = {  # a follower, its text so far, and two continuations that leave it in different states
    "script": (lambda: ScriptFollower(SOURCE), 'retain("def cube(x):\\r\\n    return ")\n', 'delete("x', 'insert("x'),
    "search-replace": (
        lambda: SearchReplaceFollower(LINES), "<<<<<<< SEARCH\n", "def cube(x):\n", "def same(x):\n=======\n"
    ),
    "udiff": (lambda: UdiffFollower(LINES), "@@ ... @@\n", " def cube(x):\n ", "-    return x * x\n "),
    "reply": (lambda: ReplyFollower(SOURCE), "Cubing.\n```edit m.py\nretain(3)\n", 'delete("', "```\nDone"),
}


@pytest.mark.parametrize("kind", FORKS)
def test_a_fork_and_its_original_go_their_own_ways(kind):
    make, written, one, other = FORKS[kind]

    def after(text: str) -> tuple:
        follower = make()
        assert takes(follower, text), text
        return state(follower)

    original = make()
    assert takes(original, written)
    fork = original.fork()
    assert takes(fork, one) and state(original) == after(written)  # reading into the fork left the original be
    assert takes(original, other) and state(fork) == after(written + one)  # and the other way round
    assert state(original) == after(written + other) != after(written + one)


LINE_BLOCK_TEXTS = [
    "```search-replace m.py\n<<<<<<< SEARCH\n    return x * x\n\n\ndef same(x):\n=======\nnew\n>>>>>>> REPLACE\n```\n",
    "```search-replace m.py\n<<<<<<< SEARCH\n    return x * x * x \n",
    "```search-replace m.py\n<<<<<<< SEARCH\n\n\n=======\n",
    "```diff m.py\n--- a\n+++ b\n@@ ... @@\n def square(x):\n-    return x * x\n+    return x ** 2\n```\nDone.\n",
    "```diff m.py\n@@ ... @@\n-    return x\n@@ ... @@\n-def cube(x):\n",
    "```diff m.py\n@@ ... @@\n-    return x * x\n```\n",
]


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.sampled_from(LINE_BLOCK_TEXTS), st.lists(st.integers(1, 200), min_size=1, max_size=12))
def test_the_decisions_do_not_depend_on_how_the_text_is_split(text, cuts):
    whole = ReplyFollower(LINES, path="m.py")
    decision = whole.read(text)
    split = ReplyFollower(LINES, path="m.py")
    points = sorted({0, len(text), *(cut % (len(text) + 1) for cut in cuts)})
    pieces = [text[a:b] for a, b in pairwise(points)]
    assert all(split.read(piece) for piece in pieces) == decision
    if decision:
        assert (split.block is None, split.blocks) == (whole.block is None, whole.blocks)


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


REAL_EDITS = (  # edits from the dev set with several blocks in both line formats
    "express@80e64691e1:examples/web-service/index.js",
    "rich@0cf528d9a8:examples/export.py",
    "express@323a38965a:examples/route-map/index.js",
)


@pytest.fixture(scope="module")
def real_edits():
    from evals.cases import DEFAULT_CASES, load_cases

    by_id = {case["id"]: case for case in load_cases(DEFAULT_CASES)}
    return [by_id[case_id] for case_id in REAL_EDITS]


def line_grounding_after(vocab, tokenizer, written: str, source: str = LINES) -> EditGrounding:
    grounding = EditGrounding(vocab, source, frozenset({1}), path="m.py")
    for token in tokenizer(written, add_special_tokens=False).input_ids:
        assert grounding.allows(token), written
        grounding.advance(token)
    return grounding


@pytest.mark.parametrize("fmt", ["search-replace", "udiff"])
def test_the_evals_reference_outputs_are_allowed_token_by_token(tokenizer, vocab, real_edits, fmt):
    from evals.decode import written_output
    from tools.formats.lines import minimal_blocks

    for case in real_edits:
        assert len(minimal_blocks(case["before"], case["after"])) >= 3
        grounding = EditGrounding(vocab, case["before"], frozenset({1}), path=case["path"])
        stops = []
        for token in tokenizer(written_output(case, fmt), add_special_tokens=False).input_ids:
            assert grounding.allows(token), case["id"]
            stops.append(grounding.allows(1))
            grounding.advance(token)
        assert grounding.allows(1) and grounding.stats == GroundingStats(blocks=1)  # closed, nothing constrained
        assert stops[0] and not all(stops[1:])  # before the block, and not everywhere inside it


def test_a_stop_token_ends_the_reply_only_between_blocks(tokenizer, vocab):
    block = "```search-replace m.py\n<<<<<<< SEARCH\n    return x * x * x\n=======\n    return x ** 3\n"
    assert not line_grounding_after(vocab, tokenizer, block).allows(1)
    assert not line_grounding_after(vocab, tokenizer, block[:-25]).allows(1)
    assert line_grounding_after(vocab, tokenizer, block + ">>>>>>> REPLACE\n").allows(1)
    hunk = "```diff m.py\n@@ ... @@\n-    return x"
    assert not line_grounding_after(vocab, tokenizer, hunk + "\n", TWICE).allows(1)  # twice: the hunk cannot end
    assert not line_grounding_after(vocab, tokenizer, hunk).allows(1)  # inside a line
    assert line_grounding_after(vocab, tokenizer, hunk + "\n").allows(1)
    assert not line_grounding_after(vocab, tokenizer, "```diff m.py\n@@ ... @@\n").allows(1)  # no old line yet


def test_greedy_grounded_decoding_takes_the_best_token_the_file_allows(tokenizer, vocab):
    import torch

    written = "```search-replace m.py\n<<<<<<< SEARCH\ndef cube(x):\n"
    grounding = line_grounding_after(vocab, tokenizer, written)
    tab, four = (tokenizer(t, add_special_tokens=False).input_ids[0] for t in ("\t", "    "))
    logits = torch.zeros(len(vocab.texts))
    logits[tab], logits[four] = 5.0, 1.0
    assert not grounding.allows(tab)  # the file indents by four spaces
    assert grounding.best_allowed(logits) == four and grounding.stats.constrained_tokens == 1
    # greedy from there, the target always preferring tabs and trailing spaces: every token taken is allowed
    logits[[i for i, text in enumerate(vocab.texts) if text and ("\t" in text or " \n" in text)]] = 6.0
    for _ in range(16):
        token = grounding.best_allowed(logits)
        assert token in grounding.allowed_tokens()
        grounding.advance(token)
        written += vocab.texts[token]
        assert ReplyFollower(LINES).read(written)
    search = written.split("<<<<<<< SEARCH\n")[1].split("=======\n")[0]
    assert len(search) > len("def cube(x):\n    ") and LINES.startswith(search)  # the file's text, tabs refused


@slow
@pytest.mark.parametrize(
    "written",
    [
        "```search-replace m.py\n<<<<<<< SEARCH\n    return x * x",
        "```search-replace m.py\n<<<<<<< SEARCH\n    return x * x\n",
        "```search-replace m.py\n<<<<<<< SEARCH\n    return x * x\n=======\n    return x ** 2\n",
        "```diff m.py\n@@ ... @@\n",
        "```diff m.py\n@@ ... @@\n def square(x):\n-    return x * x\n+",
    ],
)
def test_allowed_tokens_in_line_blocks_are_exactly_the_tokens_allowed_one_by_one(tokenizer, vocab, written):
    grounding = line_grounding_after(vocab, tokenizer, written)
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
