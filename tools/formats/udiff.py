"""`udiff`: unified-diff hunks without line numbers (`@@ ... @@`, as Aider asks models to write them), with the
same minimal context as search/replace (`tools.formats.lines`)."""

from __future__ import annotations

from tools.formats.base import Pairing, register
from tools.formats.lines import block_format, parse_udiff, render_udiff
from tools.grounding.udiff import UdiffFollower

register(block_format(
    name="udiff",
    fence="diff",
    instruction=(
        "Reply with a unified diff without line numbers: each hunk starts with `@@ ... @@`, then context lines "
        "start with a space, removed lines with `-`, added lines with `+`."
    ),
    parse=parse_udiff,
    render=render_udiff,
    follower=UdiffFollower,
    baseline=Pairing("ngram", "an agent on vLLM's prompt lookup"),
))
