"""`search-replace`: Aider-style `<<<<<<< SEARCH` / `=======` / `>>>>>>> REPLACE` blocks, each with the fewest
context lines that make its SEARCH text unique where it is applied (`tools.formats.lines`)."""

from __future__ import annotations

from tools.formats.base import Pairing, register
from tools.formats.lines import block_format, parse_search_replace, render_search_replace
from tools.grounding.search_replace import SearchReplaceFollower

register(block_format(
    name="search-replace",
    fence="search-replace",
    instruction=(
        "Reply with SEARCH/REPLACE blocks: a line `<<<<<<< SEARCH`, the exact lines to change with just enough "
        "context to be unique, a line `=======`, the new lines, a line `>>>>>>> REPLACE`."
    ),
    parse=parse_search_replace,
    render=render_search_replace,
    follower=SearchReplaceFollower,
    baseline=Pairing("ngram", "an agent on vLLM's prompt lookup"),
))
