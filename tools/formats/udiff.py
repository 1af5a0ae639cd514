"""`udiff`: unified-diff hunks without line numbers (`@@ ... @@`, as Aider asks models to write them), with the
same minimal context as search/replace (`tools.formats.lines`)."""

from __future__ import annotations

from tools.formats.base import register
from tools.formats.lines import BlockTeaching, block_format, parse_udiff, render_udiff
from tools.grounding.udiff import UdiffFollower

TEACHING = BlockTeaching(
    instruction=(
        "Reply with a unified diff without line numbers: each hunk starts with `@@ ... @@`, then context lines "
        "start with a space, removed lines with `-`, added lines with `+`."
    ),
    doing="editing them with unified diffs",
    read="Read a file: its exact text, which a diff's context and removed lines must match.",
    tool="""Change a file with a unified diff (explained below):

```diff src/app.py
@@ ... @@
 def main():
+    setup()
```""",
    rules="""# Unified diffs

Never rewrite a whole file to change part of it. A ```diff PATH block holds one or more hunks, without
file headers or line numbers. Each hunk starts with a line `@@ ... @@`, then one line per line of the file:

    ` ` (a space) and the line: context, kept as it is
    `-` and the line: removed
    `+` and the line: added

- Copy context and removed lines exactly from the file: whole lines, with their indentation.
- Give just enough context that the hunk's context and removed lines occur once in the file.
- To change a line, remove it and add its new text.
- Several changes in one file go into one ```diff block, as several hunks in file order.""",
    tool_description="Edit a file with a unified diff: hunks of ' ', '-' and '+' lines, each after a '@@ ... @@' line.",
    body_description="the hunks",
)

register(block_format("udiff", "diff", TEACHING, parse_udiff, render_udiff, UdiffFollower))
