"""Edit-aware drafting from the source: proposals follow the cursor of a streaming edit script."""

import json

from decoding.cursor import CursorDrafter
from tools.ot import format_script, ot_diff

SOURCE = '''def parse(line):
    name, value = line.split("=", 1)
    return name.strip(), value.strip()


def load(path):
    with open(path) as handle:
        return dict(parse(line) for line in handle if line.strip())
'''


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


def test_inside_an_insert_it_continues_the_source_line_being_copied():
    start = SOURCE.index("    return dict(")
    script = f'retain({start})\ninsert("    return sorted(parse(line) for line'
    assert CursorDrafter(SOURCE).propose(script) == " in handle if line.strip())\\n"


def test_between_operations_and_after_garbage_it_proposes_nothing():
    drafter = CursorDrafter(SOURCE)
    assert drafter.propose("retain(10)\n") == ""
    assert drafter.propose("retain(10)\nbogus(") == ""
    assert drafter.propose('retain(10)\nbogus(delete("x') == ""


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
    source = 'say("hi")\n\tdone\n'
    proposal = CursorDrafter(source).propose('delete("say(')
    assert proposal == '\\"hi\\")\\n\\tdone\\n'
    assert json.loads(f'"{proposal}"') == '"hi")\n\tdone\n'
