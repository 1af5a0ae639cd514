"""`search-replace`: Aider-style `<<<<<<< SEARCH` / `=======` / `>>>>>>> REPLACE` blocks, each with the fewest
context lines that make its SEARCH text unique where it is applied (`tools.formats.lines`)."""

from __future__ import annotations

from tools.formats.base import register
from tools.formats.lines import (
    BlockTeaching,
    block_format,
    inside_search_replace,
    parse_search_replace,
    render_search_replace,
)
from tools.grounding.search_replace import SearchReplaceFollower

TEACHING = BlockTeaching(
    instruction=(
        "Reply with SEARCH/REPLACE blocks: a line `<<<<<<< SEARCH`, the exact lines to change with just enough "
        "context to be unique, a line `=======`, the new lines, a line `>>>>>>> REPLACE`."
    ),
    doing="editing them with search/replace blocks",
    read="Read a file: its exact text, which SEARCH lines must match.",
    tool="""Change a file with search/replace blocks (explained below):

```search-replace src/app.py
<<<<<<< SEARCH
def main():
=======
def main():
    setup()
>>>>>>> REPLACE
```""",
    rules="""# Search/replace blocks

Never rewrite a whole file to change part of it. A ```search-replace PATH block holds one or more
search/replace blocks, each of them:

    <<<<<<< SEARCH
    the lines of the file to change
    =======
    the lines to put in their place
    >>>>>>> REPLACE

- Copy the SEARCH lines exactly from the file: whole lines, with their indentation, comments and blank lines.
- Give just enough SEARCH lines that they occur once in the file; keep blocks short.
- To delete lines, leave the REPLACE part empty; to add lines, search for the line before them and repeat it
  with the new lines after it.
- Several changes in one file go into one ```search-replace block, as several blocks in file order.""",
    tool_description="Edit a file with search/replace blocks (<<<<<<< SEARCH / ======= / >>>>>>> REPLACE).",
    body_description="the search/replace blocks",
)

register(block_format("search-replace", "search-replace", TEACHING, parse_search_replace, render_search_replace,
                      SearchReplaceFollower, fenced_text=inside_search_replace))
