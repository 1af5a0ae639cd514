"""Edit cases for the evals: JSONL files, the built-in suite, cases mined from a local git repository, and the
samples of them that are decoded (`stratify`, `one_per_language`, `shortest`).

A case is `{"id", "path", "language", "instruction", "before", "after", …}`: one file before and after one
change. Mining follows the selection rules of `evals/data/README.md` with git plumbing only (the mined
code is never built or run), so users can measure on their own history.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from evals.progress import Progress
from tools.syntax import language_for, language_name
from tools.text_files import text_lines

DEFAULT_CASES = Path(__file__).resolve().parent / "data" / "edits-dev.jsonl"  # 180 real commits; data/NOTICE
SUITE_DIR = Path(__file__).resolve().parent / "suite"

MINED_SUFFIXES = (".py", ".js", ".ts", ".go", ".rs")  # the languages mined from git histories
REGULAR_MODES = ("100644", "100755")  # plain and executable files; links and submodules are not text edits
REQUIRED_FIELDS = ("id", "before", "after")  # strings; and "path" or "language", to know the syntax


def language_of(path: str) -> str:
    """The language name of a case's file (as `tools.syntax` names its grammars, e.g. "python")."""
    return language_name(language_for(path))


def load_cases(path: Path, limit: int | None = None) -> list[dict]:
    """Cases `{"id", "path", "language", "before", "after", …}` from a JSONL file. Raises ValueError naming the
    line of a case that is not a JSON object with the required string fields, or whose id came before."""
    try:
        lines = text_lines(Path(path).read_bytes().decode("utf-8"))  # JSON leaves U+2028 etc. unescaped
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror})") from exc
    cases: list[dict] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if limit is not None and len(cases) >= limit:
            break
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg} at column {exc.colno})") from exc
        missing = [f for f in REQUIRED_FIELDS if not isinstance(case, dict) or not isinstance(case.get(f), str)]
        if missing:
            raise ValueError(f"{path}:{number}: a case needs the string fields {', '.join(missing)}")
        if not case.get("path") and not case.get("language"):
            raise ValueError(f"{path}:{number}: a case needs a path or a language")
        where = PurePosixPath(case.get("path") or ".")
        if where.is_absolute() or ".." in where.parts:
            raise ValueError(f"{path}:{number}: the path {case['path']!r} must be relative, without '..'")
        if case["id"] in seen:
            raise ValueError(f"{path}:{number}: the id {case['id']!r} is already taken by an earlier case")
        seen.add(case["id"])
        cases.append(case)
    return cases


def load_suite(directory: Path = SUITE_DIR, limit: int | None = None) -> list[dict]:
    """The built-in cases: source files in `directory` and the edits on them in `edits.toml`.

    Each edit lists `old` → `new` replacements; each `old` must occur exactly once in the file, so the
    `after` text is unambiguous and a typo in the suite fails loudly instead of producing a no-op case.
    """
    spec = tomllib.loads((directory / "edits.toml").read_text(encoding="utf-8"))
    cases = []
    for edit in spec["case"]:
        before = (directory / edit["file"]).read_text(encoding="utf-8")
        after = before
        for change in edit["change"]:
            count = after.count(change["old"])
            if count != 1:
                raise ValueError(f"suite case {edit['id']}: `old` text occurs {count} times in {edit['file']}")
            after = after.replace(change["old"], change["new"])
        cases.append({
            "id": edit["id"],
            "path": edit["file"],
            "language": language_of(edit["file"]),
            "instruction": edit["instruction"],
            "before": before,
            "after": after,
        })
        if limit is not None and len(cases) >= limit:
            break
    return cases


# ---- mining from git history -------------------------------------------------------------------------------

MIN_FILE_LINES, MAX_FILE_LINES = 30, 600
MIN_DIFF_LINES, MAX_DIFF_LINES = 1, 40
MAX_HUNKS = 4
MAX_PER_WEEK, MAX_PER_FILE = 2, 3
MAX_INSTRUCTION = 600

EXCLUDED_DIRS = {"vendor", "node_modules", "dist", "third_party", "testdata"}
BOT_AUTHOR = re.compile(r"\[bot\]|\bbot\b|dependabot|renovate|github-actions|greenkeeper", re.IGNORECASE)
FORMATTER = re.compile(
    r"\b(black|prettier|gofmt|goimports|rustfmt|cargo fmt|isort|pre-commit|autopep8|yapf|ruff format)\b"
    r"|^\s*reformat|^\s*(fmt|style)(\(.*\))?:",  # "Format …" subjects are often about output, so not those
    re.IGNORECASE,
)
VERSION_BUMP = re.compile(
    r"^\s*(bump|release|releasing|prepare (for )?release|version)\b|^\s*v?\d+\.\d+(\.\d+)?\S*\s*$"
    r"|\bbump(ed)? (the )?version\b|\brelease v?\d",
    re.IGNORECASE,
)
VERSION_LINE = re.compile(r"^\s*(__version__|version)\s*[=:]", re.IGNORECASE)
LOW_INFORMATION = {
    "wip", "fix", "fixes", "fixed", "typo", "typos", "tweak", "tweaks", "update", "updates", "updated",
    "cleanup", "clean up", "minor", "misc", "changes", "stuff", "refactor", "lint", "test", "tests", "docs",
}
GITHUB_DEFAULT_MESSAGE = re.compile(r"^(update|create) \S+$", re.IGNORECASE)
TRAILER = re.compile(
    r"^\s*(signed-off-by|co-authored-by|pr-url|reviewed-by|reviewed-on|acked-by|tested-by|reported-by|"
    r"suggested-by|change-id|cc|refs?|closes|fixes|resolves|see-also)\s*:",
    re.IGNORECASE,
)
ISSUE_REFERENCE = re.compile(
    r"(\(\s*)?"  # an opening parenthesis around the reference goes with it
    r"(\b(fix(es|ed)?|close[sd]?|resolve[sd]?|refs?|see|pr|pull request|issue|gh)\b[\s:]*)?"
    r"(https?://github\.com/[\w.-]+/[\w.-]+/(issues|pull)/\d+\S*|[\w.-]+/[\w.-]+/?#\d+|#\d+|\bgh-\d+|\bissue \d+)"
    r"(\s*\))?",
    re.IGNORECASE,
)
SKIP_CI = re.compile(r"\[(skip ci|ci skip|skip actions|no ci)\]", re.IGNORECASE)


@dataclass(frozen=True)
class _Change:
    """One commit that changed exactly one file in place (what `git log --raw` says)."""

    commit: str
    old_blob: str
    new_blob: str
    path: str


def clean_instruction(message: str) -> str:
    """Commit message → instruction: no issue/PR references, trailers or CI tags; at most 600 characters."""
    lines = []
    for original in message.strip().splitlines():
        if TRAILER.match(original):
            continue
        line = SKIP_CI.sub("", ISSUE_REFERENCE.sub("", original))
        if line != original:
            line = re.sub(r"\s+([.,;:)])", r"\1", re.sub(r"[ \t]+", " ", line)).strip()
            line = re.sub(r"[,;:]+(?=[.!?]|$)", "", line)  # punctuation left dangling where a reference was
            line = re.sub(r"\s+(in|at|on|from|per|by|to)(?=[.!?]?$)", "", line)  # and a preposition
            if lines and len(re.findall(r"\w+", line)) < 3:
                continue  # a body line left with almost nothing once its references are gone
        lines.append(line.rstrip())
    text = "\n".join(lines).strip()
    text = re.sub(r"\n{3,}", "\n\n", text)
    if len(text) > MAX_INSTRUCTION:
        cut = text[: MAX_INSTRUCTION + 1]
        text = cut[: cut.rstrip().rfind(" ")].rstrip() if " " in cut else cut[:MAX_INSTRUCTION]
    return text


def skip_reason_for_message(subject: str, instruction: str, author: str) -> str | None:
    """Why a commit's message or author disqualifies it, or None."""
    if BOT_AUTHOR.search(author):
        return "bot author"
    if FORMATTER.search(subject):
        return "formatter run"
    if VERSION_BUMP.search(subject):
        return "version bump or release"
    first_line = instruction.split("\n", 1)[0].strip().rstrip(".!").lower()
    if first_line in LOW_INFORMATION or len(instruction.split()) < 3:
        return "low-information message"
    if GITHUB_DEFAULT_MESSAGE.match(subject.strip()) and instruction.strip() == subject.strip():
        return "GitHub default message"
    return None


def skip_reason_for_path(path: str) -> str | None:
    """Why a changed file is not a candidate (extension, vendored or generated), or None."""
    parts = path.split("/")
    suffix = Path(path).suffix
    if suffix not in MINED_SUFFIXES:
        return "not a .py/.js/.ts/.go/.rs file"
    if EXCLUDED_DIRS.intersection(parts[:-1]):
        return "vendored or generated directory"
    if path.endswith((".min.js", ".d.ts")):
        return "minified or declaration file"
    return None


def diff_stats(diff: str) -> tuple[int, int, list[tuple[str, str]]]:
    """(changed lines, hunks, [(sign, line)]) of a unified diff's body."""
    hunks, changed = 0, []
    for line in diff.splitlines():
        if line.startswith("@@"):
            hunks += 1
        elif hunks and line[:1] in "+-":
            changed.append((line[0], line[1:]))
    return len(changed), hunks, changed


def skip_reason_for_texts(before: str, after: str, diff: str) -> str | None:
    """Why a (before, after, diff) triple is out of range or trivial, or None."""
    lines = before.count("\n") + (0 if before.endswith("\n") or not before else 1)
    if not MIN_FILE_LINES <= lines <= MAX_FILE_LINES:
        return f"file not {MIN_FILE_LINES}–{MAX_FILE_LINES} lines"
    if re.sub(r"\s+", "", before) == re.sub(r"\s+", "", after):
        return "whitespace or formatting only"
    changed, hunks, lines_changed = diff_stats(diff)
    if not MIN_DIFF_LINES <= changed <= MAX_DIFF_LINES:
        return f"diff not {MIN_DIFF_LINES}–{MAX_DIFF_LINES} changed lines"
    if not 1 <= hunks <= MAX_HUNKS:
        return f"diff not 1–{MAX_HUNKS} hunks"
    if all(VERSION_LINE.match(text) or not text.strip() for _, text in lines_changed):
        return "only version lines changed"
    return None


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def default_branch(repo: Path) -> str:
    """The branch the origin remote calls its default (`origin/HEAD`), else whatever is checked out."""
    try:
        return _git(repo, "symbolic-ref", "-q", "--short", "refs/remotes/origin/HEAD").decode().strip()
    except subprocess.CalledProcessError:  # no origin remote, or it names no default branch
        return "HEAD"


def _single_file_changes(repo: Path) -> list[_Change]:
    """Non-merge commits of the default branch that modify exactly one regular file in place, newest first."""
    log = _git(
        repo, "log", "--no-merges", "--no-renames", "--raw", "--no-abbrev", "--format=%H", default_branch(repo), "--"
    ).decode("utf-8", "surrogateescape")
    entries: dict[str, list[str]] = {}
    order: list[str] = []
    for line in log.splitlines():
        if re.fullmatch(r"[0-9a-f]{40}", line):
            order.append(line)
            entries[line] = []
        elif line.startswith(":") and order:
            entries[order[-1]].append(line)
    changes = []
    for commit in order:
        if len(entries[commit]) != 1:
            continue
        meta, _, path = entries[commit][0].partition("\t")
        old_mode, new_mode, old_blob, new_blob, status = meta[1:].split()
        if status == "M" and old_mode == new_mode in REGULAR_MODES and not path.startswith('"'):
            changes.append(_Change(commit, old_blob, new_blob, path))
    return changes


def _repo_name(repo: Path) -> str:
    """The name in case ids: the origin remote's repository name, else the directory's (`x/.git` → `x`)."""
    try:
        url = _git(repo, "config", "--get", "remote.origin.url").decode().strip()
    except subprocess.CalledProcessError:  # no origin remote
        url = ""
    name = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1] if url else repo.name
    name = name.removesuffix(".git")
    return name or repo.parent.name


def _decode(blob: bytes) -> str | None:
    if b"\0" in blob:
        return None
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError:
        return None


def mine_git(
    repo: Path, limit: int | None = None, skipped: Counter | None = None, progress: bool = False
) -> list[dict]:
    """Cases from the history of the git repository at `repo` (see the module docstring for the rules).

    `skipped` (if given) counts why commits were left out, so a user can see what the rules removed;
    `progress` shows a bar over the single-file commits on stderr (a long history takes minutes).
    """
    repo = Path(repo).resolve()
    name = _repo_name(repo)
    skipped = Counter() if skipped is None else skipped
    seen_pairs: set[tuple[str, str]] = set()
    candidates = []
    changes = _single_file_changes(repo)
    bar = Progress(len(changes), "mining", progress)
    for change in changes:
        bar.step(change.path)
        reason = skip_reason_for_path(change.path)
        if reason is None:
            author, subject, message, timestamp = (
                _git(repo, "show", "-s", "--format=%an <%ae>%x00%s%x00%B%x00%at", change.commit)
                .decode("utf-8", "replace")
                .split("\0")[:4]
            )
            instruction = clean_instruction(message)
            reason = skip_reason_for_message(subject, instruction, author)
        if reason is None:
            before = _decode(_git(repo, "cat-file", "blob", change.old_blob))
            after = _decode(_git(repo, "cat-file", "blob", change.new_blob))
            if before is None or after is None:
                reason = "binary or not UTF-8"
        if reason is None:
            diff = _git(
                repo, "diff", "--no-color", "--no-ext-diff", "--diff-algorithm=myers", "-U3",
                change.old_blob, change.new_blob,
            ).decode("utf-8", "replace")
            reason = skip_reason_for_texts(before, after, diff)
        if reason is None and (before, after) in seen_pairs:
            reason = "duplicate of another commit's edit"
        if reason is not None:
            skipped[reason] += 1
            continue
        seen_pairs.add((before, after))
        candidates.append({
            "id": f"{name}@{change.commit[:10]}:{change.path}",
            "repo": name,
            "commit": change.commit,
            "path": change.path,
            "language": language_of(change.path),
            "instruction": instruction,
            "before": before,
            "after": after,
            "diff_lines": diff_stats(diff)[0],
            "_time": int(timestamp),
        })
    bar.close()
    return _sample(candidates, limit)


def _sample(candidates: list[dict], limit: int | None) -> list[dict]:
    """Round-robin across years (newest first), at most 2 cases per ISO week and 3 per file; fixed-seed shuffle."""
    by_year: dict[int, list[dict]] = defaultdict(list)
    for case in candidates:  # candidates come newest first
        by_year[datetime.fromtimestamp(case["_time"], UTC).year].append(case)
    queues = [by_year[year] for year in sorted(by_year, reverse=True)]
    per_week: Counter = Counter()
    per_file: Counter = Counter()
    chosen: list[dict] = []
    while any(queues) and (limit is None or len(chosen) < limit):
        for queue in queues:
            while queue:
                case = queue.pop(0)
                week = datetime.fromtimestamp(case["_time"], UTC).isocalendar()[:2]
                if per_week[week] < MAX_PER_WEEK and per_file[case["path"]] < MAX_PER_FILE:
                    per_week[week] += 1
                    per_file[case["path"]] += 1
                    chosen.append(case)
                    break
            if limit is not None and len(chosen) >= limit:
                break
    for case in chosen:
        del case["_time"]
    random.Random(0).shuffle(chosen)
    return chosen


def one_per_language(cases: list[dict], languages: int) -> list[dict]:
    """The first case of each of the first `languages` languages: a small spread for --quick decoding."""
    seen: dict[str, dict] = {}
    for case in cases:
        if len(seen) < languages:
            seen.setdefault(case.get("language") or "", case)
    return list(seen.values())


def stratify(cases: list[dict], n: int) -> list[dict]:
    """`n` of the cases spread over languages and file sizes, the same every time: each language gets a share in
    proportion to its cases (at least one while `n` allows; the most common languages first when it does not),
    and within a language the picks are evenly spaced along the files ordered by size. In the input order."""
    if n >= len(cases):
        return list(cases)
    groups: dict[str, list[dict]] = {}
    for case in cases:
        groups.setdefault(case.get("language") or "", []).append(case)
    chosen = set()
    for language, quota in _quotas({language: len(group) for language, group in groups.items()}, n).items():
        ordered = sorted(groups[language], key=lambda case: (len(case["before"]), case["id"]))
        chosen |= {ordered[int((i + 0.5) * len(ordered) / quota)]["id"] for i in range(quota)}
    return [case for case in cases if case["id"] in chosen]


def _quotas(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Picks per group, in proportion to the groups' sizes with one each (Sainte-Laguë: each further pick to the
    group with the most cases per pick); with fewer picks than groups, one each for the `n` largest."""
    order = sorted(sizes, key=lambda group: (-sizes[group], group))
    quotas = {group: 1 for group in order[:n]}
    while sum(quotas.values()) < n:
        group = max((g for g in order if quotas[g] < sizes[g]), key=lambda g: sizes[g] / (quotas[g] + 0.5))
        quotas[group] += 1
    return quotas


def shortest(cases: list[dict], n: int) -> list[dict]:
    """The `n` cases with the shortest files (whole-file decoding costs a forward per token of the file)."""
    return sorted(cases, key=lambda case: (len(case["before"]), case["id"]))[:n]
