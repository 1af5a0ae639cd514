"""The exact core: apply, invert, compose and ot_diff, by example and by property."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.ot import Delete, Insert, OTError, Retain, apply, compose, delete, insert, invert, normalize, ot_diff, retain

texts = st.text(alphabet=st.sampled_from("ab \n{}é😀\t"), max_size=40)


@st.composite
def doc_and_ops(draw):
    doc = draw(texts)
    ops, pos = [], 0
    while pos < len(doc) or draw(st.booleans()):
        kind = draw(st.sampled_from(["retain", "delete", "insert"]))
        if kind == "insert":
            ops.append(Insert(draw(st.text(alphabet="xy\n😀", min_size=1, max_size=5))))
        elif pos < len(doc):
            n = draw(st.integers(1, len(doc) - pos))
            quoted = draw(st.booleans())
            text = doc[pos : pos + n] if quoted else None
            ops.append(Retain(n, text) if kind == "retain" else Delete(n, text))
            pos += n
        if len(ops) > 12:
            break
    return doc, ops


def test_the_example_from_the_design():
    doc = "this is really beautiful"
    script = [retain(8), delete(6), insert("very very"), retain(10)]
    assert apply(doc, script) == "this is very very beautiful"


def test_trailing_retain_is_optional():
    assert apply("hello world", [retain(6), delete("world"), insert("there")]) == "hello there"


def test_counts_are_code_points():
    assert apply("é😀x", [retain(2), delete("x"), insert("y")]) == "é😀y"


def test_quoted_text_must_match():
    with pytest.raises(OTError, match="does not match"):
        apply("hello", [delete("help")])


def test_past_the_end_is_an_error():
    with pytest.raises(OTError, match="past the end"):
        apply("abc", [retain(2), delete(5)])


def test_counts_and_quotes_must_agree():
    with pytest.raises(OTError):
        Retain(3, "ab")
    with pytest.raises(OTError):
        Delete(-1)


def test_normalize_merges_and_orders():
    ops = [Retain(1), Retain(2), Delete(1, "a"), Insert("x"), Insert("y"), Retain(4)]
    assert normalize(ops) == [Retain(3), Insert("xy"), Delete(1, "a")]


@settings(max_examples=300, deadline=None)
@given(texts, texts)
def test_diff_then_apply_gives_after(before, after):
    assert apply(before, ot_diff(before, after)) == after
    assert apply(before, ot_diff(before, after, quoted=False)) == after


@settings(max_examples=300, deadline=None)
@given(doc_and_ops())
def test_invert_undoes(case):
    doc, ops = case
    assert apply(apply(doc, ops), invert(ops, doc)) == doc


@settings(max_examples=300, deadline=None)
@given(doc_and_ops(), st.data())
def test_compose_agrees_with_sequential_apply(case, data):
    doc, first = case
    middle = apply(doc, first)
    second = data.draw(st.sampled_from([ot_diff(middle, middle[::-1]), ot_diff(middle, "zz" + middle[1:])]))
    assert apply(doc, compose(first, second)) == apply(middle, second)


def test_ot_diff_quotes_deletes_and_is_minimal_on_a_one_word_change():
    before = "def area(r):\n    return 3.14 * r * r\n"
    after = "def area(r):\n    return math.pi * r * r\n"
    ops = ot_diff(before, after)
    assert [op for op in ops if isinstance(op, Delete)] == [Delete(4, "3.14")]
    assert [op for op in ops if isinstance(op, Insert)] == [Insert("math.pi")]


def test_ot_diff_writes_each_replacement_as_taught_the_delete_then_its_insert():
    ops = ot_diff("x = 1\ny = 2\n", "x = 10\ny = 3\n", merge_within=0)
    assert [op for op in ops if not isinstance(op, Retain)] == [Insert("0"), Delete(1, "2"), Insert("3")]
    assert apply("x = 1\ny = 2\n", ops) == "x = 10\ny = 3\n"
    assert normalize(ops) != ops  # normalize's canonical order puts the insert first; the edit is the same
    assert apply("x = 1\ny = 2\n", normalize(ops)) == "x = 10\ny = 3\n"


def test_quoted_changes_close_together_are_one_replacement_and_far_apart_stay_apart():
    before = "def f(a, b):\n    return a + b\n" + "x = 1\n" * 30 + "y = 2\n"
    after = before.replace("(a, b)", "(a, c)").replace("a + b", "a + c").replace("y = 2", "y = 3")
    ops = ot_diff(before, after)
    assert [op for op in ops if not isinstance(op, Retain)] == [
        Delete(20, "b):\n    return a + b"), Insert("c):\n    return a + c"), Delete(1, "2"), Insert("3")
    ]
    assert apply(before, ops) == after
    assert len([op for op in ot_diff(before, after, merge_within=0) if isinstance(op, Insert)]) == 3
    assert len([op for op in ot_diff(before, after, quoted=False) if isinstance(op, Insert)]) == 3  # minimal
