"""Edit-aware drafting from the source: proposals follow the cursor of a streaming edit script."""

import json

import pytest

from decoding.drafting.base import DraftContext
from decoding.drafting.cursor import MAX_PROPOSAL_TOKENS, PROPOSAL_CHARS, CursorDrafter, CursorTokenDrafter
from tools.ot import format_script, ot_diff

SOURCE = '''def parse(line):
    name, value = line.split("=", 1)
    return name.strip(), value.strip()


def load(path):
    with open(path) as handle:
        return dict(parse(line) for line in handle if line.strip())
'''


def _escaped(text: str) -> str:
    return json.dumps(text)[1:-1]


def _from(source: str, at: int) -> str:
    """What the drafter proposes of `source` from offset `at`: as much as a proposal holds, JSON-escaped."""
    return _escaped(source[at : at + PROPOSAL_CHARS])


def _agreement(proposal: str, actual: str) -> int:
    n = 0
    while n < min(len(proposal), len(actual)) and proposal[n] == actual[n]:
        n += 1
    return n


def test_inside_a_quoted_delete_it_proposes_the_source_at_the_cursor():
    start = SOURCE.index("with open")
    script = f'retain({start})\ndelete("with op'
    proposal = CursorDrafter(SOURCE).propose(script)
    assert proposal.startswith("en(path) as handle:\\n")


def test_a_miscounted_retain_is_followed_through_the_quote():
    start = SOURCE.index("return name")
    script = f'retain({start + 2})\ndelete("return na'
    assert CursorDrafter(SOURCE).propose(script).startswith("me.strip(), value.strip()")


def test_inside_an_insert_it_continues_the_source_being_copied():
    start = SOURCE.index("    return dict(")
    script = f'retain({start})\ninsert("    return sorted(parse(line) for line'
    assert CursorDrafter(SOURCE).propose(script) == " in handle if line.strip())\\n"  # the source's end
    script = 'insert("    return name.strip(), value.str'  # the copied line goes on into the next ones
    assert CursorDrafter(SOURCE).propose(script) == _from(SOURCE, SOURCE.index("ip()\n\n\ndef load"))


def test_a_count_of_any_length_is_followed_without_reading_it_as_a_number():
    """Model output is untrusted: a count of thousands of digits (past int()'s digit limit) ends the count, and
    proposes no file text, since it gets past the end of any file."""
    assert CursorDrafter(SOURCE).propose("retain(" + "9" * 5000) == ')\ndelete("'


def test_after_garbage_it_proposes_nothing():
    drafter = CursorDrafter(SOURCE)
    assert drafter.propose("retain(10)\nbogus(") == ""
    assert drafter.propose('retain(10)\nbogus(delete("x') == ""


def test_between_and_inside_ops_it_proposes_the_scripts_own_syntax():
    """The ops a script usually writes next, spelled on from what it has; a count's end and the op after it."""
    body = SOURCE.index("    name, value")
    cases = {
        "": "retain(",
        "ret": "ain(",
        "retain": "(",
        "retain(2": ')\ndelete("' + _from(SOURCE, 2),  # each digit is a surprise, the count's end need not be,
        f"retain({body}": ')\ndelete("' + _from(SOURCE, body),  # nor the delete of what the count gets to
        f"retain({body})": '\ndelete("' + _from(SOURCE, body),  # what is at the cursor
        f"retain({body})\nre": 'tain("' + _from(SOURCE, body),  # after a count, a retain is a quoted anchor
        f"retain({body})\nins": 'ert("    ',  # another op begun: its opening, an indented new line
        f'retain({body})\ninsert("x = 1\\n")': "\nretain(",  # after an insert, the count to the next change
        f'retain({body})\ninsert("x = 1\\n")\nde': 'lete("' + _from(SOURCE, body),
    }
    for script, proposal in cases.items():
        assert CursorDrafter(SOURCE).propose(script) == proposal, script


def test_following_a_real_script_the_quotes_are_drafted_many_characters_per_step():
    after = SOURCE.replace("value.strip()", "value.strip().lower()").replace(
        "        return dict(parse(line) for line in handle if line.strip())\n", "        return {}\n"
    )
    after = after[after.index("def load") :]  # the whole parse() function is deleted
    script = format_script(ot_diff(SOURCE, after)) + "\n"
    drafter, position, steps = CursorDrafter(SOURCE), 0, 0
    while position < len(script):
        # like speculative decoding: keep the agreeing prefix of the proposal, plus one character
        position += _agreement(drafter.propose(script[:position]), script[position:]) + 1
        steps += 1
    assert len(script) / steps > 3


def test_proposals_are_json_escaped():
    source = 'say("hi",\t1)\ndone\n'
    proposal = CursorDrafter(source).propose('delete("say(')
    assert proposal == '\\"hi\\",\\t1)\\ndone\\n'
    assert json.loads(f'"{proposal}"') == '"hi",\t1)\ndone\n'


def test_a_proposal_runs_on_past_the_end_of_its_source_line():
    """A quote that goes on into the next lines is drafted whole: stopping at each line's end cost a forward per
    line of every multi-line delete, and a quote's end is a surprise wherever it is."""
    proposal = CursorDrafter(SOURCE).propose('delete("def parse(')
    assert proposal == _from(SOURCE, len("def parse("))
    assert proposal.startswith("line):\\n    name, value") and len(json.loads(f'"{proposal}"')) == PROPOSAL_CHARS


@pytest.mark.slow
def test_the_token_drafter_drafts_the_rest_of_the_quoted_source_line(embedded_model):
    tok = embedded_model.tokenizer
    drafter = CursorTokenDrafter(tok)
    source_ids = tok(SOURCE, add_special_tokens=False).input_ids
    script = 'retain("def parse(line):\\n")\nretain(95)\ndelete("    with op'
    written = tok(f"Edit:\n```edit config.py\n{script}", add_special_tokens=False).input_ids
    draft = drafter.propose(DraftContext(tokens=written, sources=[source_ids]), k=40)
    text = tok.decode(draft.tokens)
    assert text.startswith("en(path) as handle:\\n")  # the rest of the source line, JSON-escaped


class Chars:
    """A tokenizer with one token per character: enough to follow the text."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))

    def __call__(self, text, add_special_tokens=False):
        return type("Encoding", (), {"input_ids": [ord(c) for c in text]})


def test_a_proposal_is_drafted_whole_past_a_short_draft_length_up_to_its_cap():
    """Syntax and quoted file text are drafted whole (the drafter sizes the draft), at most MAX_PROPOSAL_TOKENS."""
    source = [ord(c) for c in SOURCE]
    script = [ord(c) for c in '```edit config.py\nretain(10)\ndelete("']
    draft = CursorTokenDrafter(Chars()).propose(DraftContext(tokens=script, sources=[source]), k=2)
    assert draft.self_sized and Chars().decode(draft.tokens) == _from(SOURCE, 10)[:MAX_PROPOSAL_TOKENS]
    counted = script[: script.index(ord(")")) + 1]  # the script ends after `retain(10)`
    draft = CursorTokenDrafter(Chars()).propose(DraftContext(tokens=counted, sources=[source]), k=2)
    assert draft.self_sized and Chars().decode(draft.tokens) == ('\ndelete("' + _from(SOURCE, 10))[:MAX_PROPOSAL_TOKENS]
    assert len(draft.tokens) == MAX_PROPOSAL_TOKENS
    draft = CursorTokenDrafter(Chars()).propose(DraftContext(tokens=script, sources=[source], limit=3), k=2)
    assert len(draft.tokens) == 3  # never past the length budget
    short = CursorTokenDrafter(Chars()).propose(DraftContext(tokens=script, sources=[source]), k=PROPOSAL_CHARS + 8)
    assert not short.self_sized  # a draft length above the proposal: the proposal, then lookup, as before


def test_outside_a_script_the_token_drafter_is_prompt_lookup():
    context = DraftContext(tokens=[ord(c) for c in "abcdXYZ abcd"], sources=[[ord(c) for c in "unrelated"]])
    assert CursorTokenDrafter(Chars()).propose(context, k=3).tokens == [ord(c) for c in "XYZ"]


REPLACED = '''def total(order):
    cost = order.price * order.quantity + shipping_cost(order)
    fee = order.base + shipping_fee(order)
    return cost + fee
'''


COST_LINE = "    cost = order.price * order.quantity + shipping_cost(order)\\n"


def test_an_insert_after_a_delete_starts_with_the_deleted_line():
    assert CursorDrafter(REPLACED).propose(f'delete("{COST_LINE}")\ninsert("') == COST_LINE


def test_an_insert_after_a_delete_resyncs_on_the_deleted_text_after_a_change():
    # " + ship" is nearer the cursor in the next line of the source, but the insert is rewriting the deleted one
    script = f'delete("{COST_LINE}")\ninsert("    cost = order.price * count + ship'
    assert CursorDrafter(REPLACED).propose(script) == "ping_cost(order)\\n"


def test_an_insert_that_leaves_the_deleted_text_falls_back_to_the_source():
    script = 'delete("    return cost + fee\\n")\ninsert("    fee = order.base + shipping'
    assert CursorDrafter(REPLACED).propose(script) == "_fee(order)\\n    return cost + fee\\n"


def test_a_proposal_goes_on_from_an_escape_the_script_has_begun():
    script = 'retain("def total(order):\\n")\ndelete("    cost = order.price * order.quantity + shipping_cost(order)\\'
    assert CursorDrafter(REPLACED).propose(script) == "n" + _from(REPLACED, REPLACED.index("    fee ="))


def test_between_ops_a_delete_is_followed_by_its_replacement_and_an_anchor_by_a_delete():
    drafter = CursorDrafter(REPLACED)
    assert drafter.propose('delete("    return cost + fee\\n")') == '\ninsert("    return cost + fee\\n'
    drafter = CursorDrafter(REPLACED)
    assert drafter.propose('retain("(order):\\n")\n') == 'delete("' + _from(REPLACED, REPLACED.index("    cost"))
    assert CursorDrafter(REPLACED).propose('insert("x = 1\\n")\n') == "retain("
