"""Eval cases: the built-in suite, JSONL files, and mining a git history by the shared selection rules."""

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

import evals
from evals.cases import DEFAULT_CASES, clean_instruction, load_cases, load_suite, mine_git, skip_reason_for_message


def test_built_in_suite_covers_the_main_languages_with_real_changes():
    cases = load_suite()
    assert 15 <= len(cases) <= 30
    languages = Counter(case["language"] for case in cases)
    assert {"python", "javascript", "typescript", "go", "rust"} <= set(languages)
    assert len({case["id"] for case in cases}) == len(cases)
    for case in cases:
        assert case["before"] != case["after"], case["id"]
        assert len(case["instruction"].split()) >= 3, case["id"]


def test_suite_refuses_an_edit_whose_old_text_is_not_unique(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\nx = 1\n")
    (tmp_path / "edits.toml").write_text(
        '[[case]]\nid = "dup"\nfile = "a.py"\ninstruction = "change one x"\n'
        '[[case.change]]\nold = "x = 1"\nnew = "x = 2"\n'
    )
    with pytest.raises(ValueError, match="occurs 2 times"):
        load_suite(tmp_path)


def test_load_cases_reads_jsonl_and_honours_limit(tmp_path):
    path = tmp_path / "cases.jsonl"
    rows = [{"id": f"c{i}", "path": "a.py", "language": "python", "before": "a\n", "after": "b\n"} for i in range(3)]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    assert [case["id"] for case in load_cases(path)] == ["c0", "c1", "c2"]
    assert [case["id"] for case in load_cases(path, limit=2)] == ["c0", "c1"]


def test_instruction_cleaning_removes_references_trailers_and_ci_tags():
    message = (
        "Return None from lookup when the key is missing (#42) [skip ci]\n\n"
        "Fixes owner/repo#7 and GH-12.\n"
        "See https://github.com/owner/repo/issues/9\n"
        "Signed-off-by: A Person <a@example.com>\n"
    )
    assert clean_instruction(message) == "Return None from lookup when the key is missing"
    assert clean_instruction("Drop the None as described in owner/repo/#312.") == "Drop the None as described."
    assert clean_instruction("Add retry to fetch (closes #12)\n\nThe loop spun forever, see GH-44.\nPR-URL: x") == (
        "Add retry to fetch\n\nThe loop spun forever."
    )
    long = clean_instruction("Explain " + "word " * 300)
    assert len(long) <= 600 and not long.endswith(" ") and long.endswith("word")


@pytest.mark.parametrize(("subject", "reason"), [
    ("Run black over the package", "formatter run"),
    ("cargo fmt", "formatter run"),
    ("style: apply prettier to the tests", "formatter run"),
    ("Release 2.1.0", "version bump or release"),
    ("Bump version to 1.4", "version bump or release"),
    ("typo", "low-information message"),
    ("Update parser.py", "low-information message"),
    ("Format help text of long options in two columns", None),
    ("Use a faster regex when parsing versions", None),
])
def test_message_rules(subject, reason):
    assert skip_reason_for_message(subject, clean_instruction(subject), "Dev Eloper <dev@example.com>") == reason


# ---- mining ----------------------------------------------------------------------------------------------------

WEEK = 7 * 24 * 3600
BASE_TIME = 1_700_000_000


class Repo:
    """A throwaway git repository whose commits each land in their own ISO week."""

    def __init__(self, path: Path):
        self.path = path
        self.commits = 0
        path.mkdir()
        self._git("init", "-q", "-b", "main")

    def _git(self, *args: str, author: str = "Dev Eloper <dev@example.com>") -> str:
        name, email = author[:-1].split(" <")
        when = f"{BASE_TIME + self.commits * WEEK} +0000"
        env = {**os.environ, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": when,
               "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email, "GIT_COMMITTER_DATE": when,
               "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        return subprocess.run(["git", "-C", str(self.path), *args], check=True, capture_output=True, text=True,
                              env=env).stdout

    def read(self, name: str) -> str:
        return (self.path / name).read_text()

    def change(self, name: str, message: str, old: str, new: str, author: str = "Dev Eloper <dev@example.com>") -> str:
        """Commit `name` with every `old` replaced by `new`."""
        return self.commit(message, {name: self.read(name).replace(old, new)}, author)

    def commit(self, message: str, files: dict[str, str], author: str = "Dev Eloper <dev@example.com>") -> str:
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            self._git("add", name)
        self.commits += 1
        self._git("commit", "-q", "-m", message, author=author)
        return self._git("rev-parse", "HEAD").strip()


def _module(name: str, lines: int = 40, version: str = "1.0") -> str:
    body = [f'__version__ = "{version}"', ""]
    body += [f"def {name}_{i}(value):\n    return value + {i}\n" for i in range((lines - 2) // 3)]
    return "\n".join(body) + "\n"


@pytest.fixture
def history(tmp_path):
    repo = Repo(tmp_path / "proj")
    repo.commit("Add the first version of the project", {
        "app.py": _module("app"), "util.py": _module("util"), "small.py": "x = 1\n",
        "vendor/lib.py": _module("lib"), "notes.txt": "a\n" * 40,
    })
    guard = ("return value + 3\n", "return value + 3 if value else None\n")
    shas = {
        "good": repo.change("app.py", "Handle empty input in app_3 gracefully", *guard),
        "revert": repo.change("app.py", "Revert the empty input handling in app_3", *reversed(guard)),
        "duplicate (newer)": repo.change("app.py", "Handle empty input in app_3 gracefully, again", *guard),
        "two files": repo.commit("Change both modules at once please", {
            "app.py": repo.read("app.py").replace("+ 5", "+ 50"),
            "util.py": repo.read("util.py").replace("+ 5", "+ 50"),
        }),
        "formatting": repo.change("util.py", "Reflow the helpers in util module", "value + 7", "value+7"),
        "version lines": repo.change("util.py", "Prepare the next cycle of work", '"1.0"', '"1.1"'),
        "bump subject": repo.change("small.py", "Bump version to 1.2", "x = 1", "x = 2"),
        "short file": repo.change("small.py", "Change the constant in small module", "x = 2", "x = 3"),
        "vendored": repo.change("vendor/lib.py", "Patch the vendored library for speed", "+ 1\n", "+ 100\n"),
        "big diff": repo.change("util.py", "Rename the parameter of all util helpers", "value", "number"),
        "low information": repo.change("app.py", "fix", "+ 8", "+ 80"),
        "bot": repo.change("app.py", "Update dependency pins for security", "+ 9", "+ 90",
                           author="dependabot[bot] <support@github.com>"),
        "not source": repo.change("notes.txt", "Document the release process here", "a", "b"),
        "cleaned": repo.change(
            "util.py",
            "Return None from util_4 when the key is missing (#42)\n\nSigned-off-by: A Person <a@example.com>",
            "    return number + 4\n", "    if number is None:\n        return None\n    return number + 4\n"),
    }
    return repo, shas


def test_mining_keeps_only_single_file_source_edits_within_the_rules(history):
    repo, shas = history
    skipped = Counter()
    cases = mine_git(repo.path, skipped=skipped)
    mined = {case["commit"] for case in cases}
    assert mined == {shas["cleaned"], shas["revert"], shas["duplicate (newer)"]}
    assert shas["good"] not in mined  # the same (before, after) pair as a newer commit: taken once
    assert skipped["whitespace or formatting only"] == 1
    assert skipped["only version lines changed"] == 1
    assert skipped["version bump or release"] == 1
    assert skipped["bot author"] == 1 and skipped["low-information message"] == 1
    assert skipped["vendored or generated directory"] == 1 and skipped["not a .py/.js/.ts/.go/.rs file"] == 1
    assert skipped["duplicate of another commit's edit"] == 1
    assert skipped["file not 30–600 lines"] == 1
    assert skipped["diff not 1–40 changed lines"] == 1


def test_mined_cases_have_the_shared_fields_and_exact_texts(history):
    repo, shas = history
    case = next(c for c in mine_git(repo.path) if c["commit"] == shas["cleaned"])
    assert case["id"] == f"proj@{shas['cleaned'][:10]}:util.py"
    assert case["path"] == "util.py" and case["language"] == "python" and case["repo"] == "proj"
    assert case["instruction"] == "Return None from util_4 when the key is missing"
    assert case["after"] == repo.read("util.py")
    assert case["before"] == case["after"].replace("    if number is None:\n        return None\n", "")
    assert case["diff_lines"] == 2


def test_mining_limit_and_a_path_that_is_not_a_repository(history, tmp_path):
    repo, _ = history
    assert len(mine_git(repo.path, limit=2)) == 2
    repo._git("remote", "add", "origin", "git@github.com:owner/upstream.git")
    (case,) = mine_git(repo.path, limit=1)
    assert case["repo"] == "upstream" and case["id"].startswith("upstream@")
    with pytest.raises(subprocess.CalledProcessError):
        mine_git(tmp_path / "nowhere")


def test_mining_reads_the_default_branch_not_the_checked_out_one(history):
    repo, shas = history
    repo._git("update-ref", "refs/remotes/origin/main", shas["revert"])
    repo._git("symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")
    repo._git("checkout", "-q", "-b", "feature")
    feature = repo.change("util.py", "Return zero from util_6 for empty input", "    return number + 6\n",
                          "    if not number:\n        return 0\n    return number + 6\n")
    mined = {case["commit"] for case in mine_git(repo.path)}
    assert mined == {shas["good"], shas["revert"]}  # origin/main ends at the revert; feature is not read
    assert feature not in mined


def test_load_cases_reads_text_with_line_separators_as_json_writes_it(tmp_path):
    path = tmp_path / "cases.jsonl"
    case = {"id": "c0", "path": "a.py", "before": 's = "a\u2028b"\n', "after": 's = "A\u2028b"\n'}
    path.write_text(json.dumps(case, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_cases(path) == [case]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "path": "a.py", "before": "x"', "cases.jsonl:2: not JSON"),
        ('{"id": "a", "path": "a.py", "before": "x\\n"}', "cases.jsonl:2: a case needs the string fields after"),
        ('["a", "b"]', "cases.jsonl:2: a case needs the string fields id, before, after"),
        ('{"id": "a", "before": "x\\n", "after": "y\\n"}', "cases.jsonl:2: a case needs a path or a language"),
        ('{"id": "c0", "path": "b.py", "before": "x\\n", "after": "y\\n"}', "the id 'c0' is already taken"),
        ('{"id": "a", "path": "/etc/x.py", "before": "x", "after": "y"}', "must be relative, without '..'"),
        ('{"id": "a", "path": "src/../../x.py", "before": "x", "after": "y"}', "must be relative, without '..'"),
    ],
)
def test_load_cases_names_the_line_of_a_bad_case(tmp_path, line, message):
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps({"id": "c0", "path": "a.py", "before": "a\n", "after": "b\n"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        load_cases(path)


def test_cli_reports_a_bad_cases_file_without_a_traceback(tmp_path, capsys):
    from evals.command import main

    path = tmp_path / "cases.jsonl"
    path.write_bytes(b'{"id": "\xff"}\n')
    assert main(["--cases", str(path), "--drafters", "none"]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err
    assert main(["--cases", str(tmp_path), "--drafters", "none"]) == 2
    assert "cannot read it" in capsys.readouterr().err


def test_mining_keeps_edits_of_executable_scripts(tmp_path):
    repo = Repo(tmp_path / "scripts")
    repo.commit("Add the release script to the tools", {"release.py": _module("release")})
    (repo.path / "release.py").chmod(0o755)
    repo._git("add", "release.py")
    repo._git("commit", "-q", "-m", "Make the release script executable for everyone")
    sha = repo.change("release.py", "Handle empty input in release_3 gracefully", "return value + 3\n",
                      "return value + 3 if value else None\n")
    assert [case["commit"] for case in mine_git(repo.path)] == [sha]


def test_mined_cases_saved_with_save_cases_measure_again_as_the_same_edits(history, tmp_path, capsys):
    from evals.command import main

    repo, _ = history
    saved, first, again = tmp_path / "mined.jsonl", tmp_path / "first.json", tmp_path / "again.json"
    assert main(["--from-git", str(repo.path), "--drafters", "none", "--formats", "ot", "--save-cases", str(saved),
                 "--json", str(first)]) == 0
    assert [case["id"] for case in load_cases(saved)] == [case["id"] for case in mine_git(repo.path)]
    assert main(["--cases", str(saved), "--drafters", "none", "--formats", "ot", "--json", str(again)]) == 0
    assert json.loads(first.read_text())["cases"] == json.loads(again.read_text())["cases"]


def test_the_real_edit_set_ships_in_the_package_with_a_notice_for_every_source():
    assert DEFAULT_CASES.is_relative_to(Path(evals.__file__).parent)  # installed with the package, not beside it
    cases = load_cases(DEFAULT_CASES)
    assert len(cases) == 180
    notice = (DEFAULT_CASES.parent / "NOTICE").read_text()
    for repo in {case["repo"] for case in cases}:
        assert f"https://github.com/{repo}" in notice
    for case in cases:
        assert f"{case['commit']}  {case['path']}" in notice
    assert notice.count("  license:   ") == 6
