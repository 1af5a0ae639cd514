"""Grounding as text: followers that say, character by character, whether an edit block can still land in the file.

The commonest failed edit, for every agent and format, is quoted text that is not in the file (tabs for spaces,
CRLF, escapes, a word the model misremembers). When the server knows the file, it can rule such text out as it is
decoded: each format's follower (`follower.BlockFollower`) is fed a block's text as it is written and allows it only
while the block stays well-formed and lands in the file where the format's applier would put it. An edit script's
quotes are the file's text and its counts stay inside it (`script`); search/replace and udiff blocks quote whole
lines of the file, in order, and land once (`line_blocks`, `search_replace`, `udiff`), so the formats the evals
compare get the same guarantee. `reply` follows a whole reply: which fence opens which follower, for which file.

No tokens and no engine here: `decoding.engine.grounding` adapts these followers to a tokenizer's vocabulary, for
the embedded engine and for vLLM alike.
"""

# The formats register these followers, and the line followers read the formats' grammar (`tools.formats.lines`):
# importing the registry first lets either package be imported first.
import tools.formats  # noqa: F401
