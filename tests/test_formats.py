"""Edit formats: minimal references that apply back exactly, each format's applier, model-like perturbations, and
the registry they are all in."""

import pytest

from evals.cases import DEFAULT_CASES, load_cases, load_suite
from tools.formats import Format, FormatError, Pairing, format_names, get_format, register
from tools.formats.lines import minimal_blocks
from tools.syntax import language_for

SUITE = load_suite()


def reference_output(fmt: str, before: str, after: str) -> str:
    return get_format(fmt).reference(before, after)


def apply_output(fmt: str, before: str, output: str, language: str | None) -> str:
    return get_format(fmt).apply(before, output, language)


def perturbations(fmt: str, output: str, seed: str, trials: int = 3) -> list[tuple[str, str]]:
    perturb = get_format(fmt).perturb
    return perturb(output, seed, trials) if perturb else []


def _applies(fmt, case, output):
    try:
        return apply_output(fmt, case["before"], output, language_for(case["path"])) == case["after"]
    except FormatError:
        return False


@pytest.mark.parametrize("fmt", format_names())
def test_every_reference_applies_back_exactly_on_the_suite(fmt):
    failed = [c["id"] for c in SUITE if not _applies(fmt, c, reference_output(fmt, c["before"], c["after"]))]
    assert failed == []


def test_references_apply_back_on_the_real_commits():
    cases = load_cases(DEFAULT_CASES)
    for fmt in ("whole", "search-replace", "udiff", "ot", "ot-lines"):
        failed = [c["id"] for c in cases if not _applies(fmt, c, reference_output(fmt, c["before"], c["after"]))]
        assert failed == [], fmt
    # count-only scripts carry no text to check: the tolerant applier's line-boundary snapping can move an
    # insert that the counts put mid-line, which is why `ot` quotes context there
    counts_only = sum(_applies("ot-counts", c, reference_output("ot-counts", c["before"], c["after"])) for c in cases)
    assert counts_only / len(cases) >= 0.97


# ---- minimal blocks ----------------------------------------------------------------------------------------------

BEFORE = "def a():\n    return 1\n\n\ndef b():\n    return 1\n\n\ndef c():\n    return 3\n"


def test_a_unique_changed_line_needs_no_context():
    after = BEFORE.replace("return 3", "return 30")
    assert reference_output("search-replace", BEFORE, after) == (
        "<<<<<<< SEARCH\n    return 3\n=======\n    return 30\n>>>>>>> REPLACE\n"
    )
    assert reference_output("udiff", BEFORE, after) == "@@ ... @@\n-    return 3\n+    return 30\n"


def test_a_repeated_line_gets_the_context_that_makes_it_unique():
    after = BEFORE.replace("def b():\n    return 1", "def b():\n    return 2")
    (block,) = minimal_blocks(BEFORE, after)
    assert block.lines == [(" ", "def b():\n"), ("-", "    return 1\n"), ("+", "    return 2\n")]


def test_an_insertion_is_anchored_on_a_non_blank_line():
    after = BEFORE.replace("\n\ndef c", "\n\nX = 1\n\n\ndef c")
    (block,) = minimal_blocks(BEFORE, after)
    assert any(sign == " " and line.strip() for sign, line in block.lines)
    assert _applies("search-replace", {"before": BEFORE, "after": after, "path": "m.py"},
                    reference_output("search-replace", BEFORE, after))


def test_changes_whose_context_would_overlap_become_one_block():
    before = "b = 2\nc = 3\nb = 2\nc = 3\nb = 2\n"
    after = "b = 2\nX = 0\nb = 2\nY = 0\nb = 2\n"
    (block,) = minimal_blocks(before, after)  # the first change is unique only with the second in its context
    assert block.lines == [("-", "c = 3\n"), ("+", "X = 0\n"), (" ", "b = 2\n"), ("-", "c = 3\n"), ("+", "Y = 0\n")]
    far = BEFORE.replace("def a():\n    return 1", "def a():\n    return 10").replace("return 3", "return 30")
    assert len(minimal_blocks(BEFORE, far)) == 2


def test_a_file_without_a_final_newline_keeps_it_that_way():
    before, after = BEFORE.rstrip("\n"), BEFORE.rstrip("\n").replace("return 3", "return 4")
    for fmt in format_names():
        assert apply_output(fmt, before, reference_output(fmt, before, after), ".py") == after, fmt


# ---- appliers ----------------------------------------------------------------------------------------------------


def test_search_replace_takes_the_first_match_of_an_ambiguous_search_like_aider():
    doc = "if a {\n  x()\n}\nif b {\n  y()\n}\n"
    block = "<<<<<<< SEARCH\n}\n=======\n}\n// done\n>>>>>>> REPLACE\n"
    assert apply_output("search-replace", doc, block, None) == "if a {\n  x()\n}\n// done\nif b {\n  y()\n}\n"


def test_blocks_written_at_another_indentation_land_with_the_file_indentation():
    doc = "class A:\n    def f(self):\n        return 1\n"
    block = "<<<<<<< SEARCH\ndef f(self):\n    return 1\n=======\ndef f(self):\n    return 2\n>>>>>>> REPLACE\n"
    assert apply_output("search-replace", doc, block, None) == "class A:\n    def f(self):\n        return 2\n"
    hunk = "@@ ... @@\n def f(self):\n-    return 1\n+    return 2\n"
    assert apply_output("udiff", doc, hunk, None) == "class A:\n    def f(self):\n        return 2\n"


def test_udiff_reads_an_unsigned_blank_line_as_context():
    doc = "a = 1\n\nb = 2\n"
    assert apply_output("udiff", doc, "@@ ... @@\n a = 1\n\n-b = 2\n+b = 3\n", None) == "a = 1\n\nb = 3\n"


def test_outputs_that_cannot_apply_raise_format_errors():
    with pytest.raises(FormatError, match="not in the file"):
        apply_output("search-replace", "a\n", "<<<<<<< SEARCH\nzzz\n=======\ny\n>>>>>>> REPLACE\n", None)
    with pytest.raises(FormatError, match="no '======='"):
        apply_output("search-replace", "a\n", "<<<<<<< SEARCH\na\n>>>>>>> REPLACE\n", None)
    with pytest.raises(FormatError):
        apply_output("ot", "a\n", 'delete("nothing like this")', ".py")
    with pytest.raises(ValueError, match="unknown edit format 'xml'; known: whole, search-replace"):
        get_format("xml")


# ---- perturbations -----------------------------------------------------------------------------------------------


def test_whole_files_have_nothing_to_perturb():
    assert get_format("whole").perturb is None


def test_trimmed_whitespace_is_recovered_for_uniformly_indented_blocks():
    before = "class A:\n    def f(self):\n        return 1\n\n    def g(self):\n        return 1\n"
    after = before.replace("def g(self):\n        return 1", "def g(self):\n        return 2")
    case = {"before": before, "after": after, "path": "m.py"}
    for fmt in ("search-replace", "udiff"):
        kinds = dict(perturbations(fmt, reference_output(fmt, before, after), seed="x"))
        assert kinds["trimmed-whitespace"] != reference_output(fmt, before, after)
        assert _applies(fmt, case, kinds["trimmed-whitespace"]), fmt


def test_missing_context_misplaces_a_block_whose_context_was_needed():
    after = BEFORE.replace("def b():\n    return 1", "def b():\n    return 2")
    case = {"before": BEFORE, "after": after, "path": "m.py"}
    for fmt in ("search-replace", "udiff"):
        kinds = dict(perturbations(fmt, reference_output(fmt, BEFORE, after), seed="x"))
        shortened = kinds["missing-context"]
        assert "def b" not in shortened
        assert apply_output(fmt, BEFORE, shortened, None) == BEFORE.replace("return 1", "return 2", 1)
        assert not _applies(fmt, case, shortened)


def test_miscounted_retains_land_when_the_script_quotes_what_it_deletes():
    before = "alpha = compute(1)\nbeta = compute(2)\ngamma = compute(3)\n"
    after = before.replace("compute(2)", "measure(2)")
    case = {"before": before, "after": after, "path": "m.py"}
    quoted = perturbations("ot", reference_output("ot", before, after), seed="x", trials=3)
    counts = perturbations("ot-counts", reference_output("ot-counts", before, after), seed="x", trials=3)
    assert quoted and all(kind == "miscount before quoted text" for kind, _ in quoted)
    assert counts and all(kind == "miscount before inline insert" for kind, _ in counts)
    assert all(_applies("ot", case, text) for _, text in quoted)
    assert not any(_applies("ot-counts", case, text) for _, text in counts)


def test_perturbations_are_reproducible_from_their_seed():
    case = SUITE[0]
    output = reference_output("ot", case["before"], case["after"])
    assert perturbations("ot", output, seed="s1", trials=3) == perturbations("ot", output, seed="s1", trials=3)


@pytest.mark.parametrize("fmt", ["search-replace", "udiff"])
def test_line_formats_split_lines_at_newlines_only(fmt):
    before = 'page = 1\n\x0c\ns = "a\u2028b"\nend = 2\n'
    after = before.replace('"a\u2028b"', '"A\u2028b"')
    assert apply_output(fmt, before, reference_output(fmt, before, after), "python") == after


# ---- line-granular OT -----------------------------------------------------------------------------------------


def test_line_scripts_quote_whole_lines_and_no_counts():
    after = BEFORE.replace("return 3", "return 30")
    assert reference_output("ot-lines", BEFORE, after) == 'delete("    return 3\\n")\ninsert("    return 30\\n")'


def test_a_repeated_line_is_anchored_by_the_end_of_the_line_before_it():
    after = BEFORE.replace("def b():\n    return 1", "def b():\n    return 2")
    script = reference_output("ot-lines", BEFORE, after)
    assert script.startswith('retain("b():\\n")\ndelete("    return 1\\n")')
    assert apply_output("ot-lines", BEFORE, script, language_for("m.py")) == after


def test_line_scripts_place_several_changes_and_insertions():
    after = BEFORE.replace("def a():\n", "def a():\n    x = 0\n").replace("return 1\n\n\ndef c", "return 2\n\n\ndef c")
    after += "\n\ndef d():\n    return 4\n"
    script = reference_output("ot-lines", BEFORE, after)
    assert not any(op.rstrip(")").split("(")[1].isdigit() for op in script.splitlines())
    assert apply_output("ot-lines", BEFORE, script, language_for("m.py")) == after


def test_a_line_script_without_a_needed_retain_does_not_land():
    after = BEFORE.replace("def b():\n    return 1", "def b():\n    return 2")
    case = {"before": BEFORE, "after": after, "path": "m.py"}
    ((kind, perturbed),) = perturbations("ot-lines", reference_output("ot-lines", BEFORE, after), seed="x")
    assert kind == "no retain before a delete"
    assert not _applies("ot-lines", case, perturbed)


# ---- the registry ------------------------------------------------------------------------------------------------


def test_the_built_in_formats_are_registered_once_in_the_order_the_evals_report_them():
    assert format_names() == ("whole", "search-replace", "udiff", "ot", "ot-counts", "ot-lines")
    assert [get_format(name).fence for name in format_names()] == [
        "overwrite", "search-replace", "diff", "edit", "edit", "edit"]
    with pytest.raises(ValueError, match="registered twice"):
        register(get_format("ot"))


def test_an_alternative_needs_its_baseline_pairing_and_only_an_alternative_has_one():
    whole = get_format("whole")
    with pytest.raises(ValueError, match="baseline pairing"):
        Format("x", "x", "", whole.reference, whole.apply, role="alternative")
    with pytest.raises(ValueError, match="baseline pairing"):
        Format("x", "x", "", whole.reference, whole.apply, baseline=Pairing("ngram", "someone"))
