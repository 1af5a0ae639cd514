"""Snapshots of the main screen after an edit, and of the diff-approval screen (pytest-textual-snapshot).

Deterministic: a fixed terminal size, a clock that never moves (no tokens/s figure), a fresh state dir
(no earlier sessions), the cursor not blinking. Update with `pytest tests/test_tui_snapshots.py --snapshot-update`
and look at the SVGs before committing them.
"""

import pytest
from replay import ReplayServer, Turn
from tui_helpers import FIX_MEAN, SIZE, SPECULATION, make_app, make_workspace, send, until

from tui.screens import EditApproval

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # litellm on newer pydantic

TURNS = [
    Turn("Let me read **stats.py** first.\n```read stats.py```"),
    Turn(
        f"`mean()` divides by `len(items)`; guard it:\n```edit stats.py\n{FIX_MEAN}\n```",
        completion_tokens=31,
        usage_extra={"speculation": SPECULATION},
    ),
    Turn("```done\nmean() no longer divides by zero.\n```", usage_extra={"speculation": SPECULATION}),
]


async def up_to_the_approval(pilot) -> None:
    app = pilot.app
    app.query_one("#prompt").cursor_blink = False
    await send(pilot, "make mean() safe for empty lists")
    await until(pilot, lambda: isinstance(app.screen, EditApproval), what="the approval screen")
    await until(pilot, lambda: not app.unshown, what="the reply shown")
    await settled(pilot)


async def settled(pilot) -> None:
    """Wait until the conversation's layout and scroll position stop changing (slow under load)."""
    conversation = pilot.app.query_one("#conversation")
    last, steady = None, 0
    while steady < 3:
        await pilot.pause(0.1)
        await pilot.wait_for_scheduled_animations()
        now = (conversation.scroll_offset, conversation.virtual_size, len(conversation.children))
        steady, last = (steady + 1 if now == last else 0), now


def test_the_diff_approval_screen(snap_compare, tmp_path):
    with ReplayServer(TURNS) as server:
        app = make_app(make_workspace(tmp_path), server.url, clock=lambda: 0.0)
        assert snap_compare(app, terminal_size=SIZE, run_before=up_to_the_approval)


def test_the_main_screen_after_an_approved_edit(snap_compare, tmp_path):
    async def approve(pilot) -> None:
        await up_to_the_approval(pilot)
        await pilot.press("y")
        await until(pilot, lambda: not pilot.app.running, what="the run to end")
        await settled(pilot)

    with ReplayServer(TURNS) as server:
        app = make_app(make_workspace(tmp_path), server.url, clock=lambda: 0.0)
        assert snap_compare(app, terminal_size=SIZE, run_before=approve)
