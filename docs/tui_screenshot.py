"""Make docs/tui.png: the app driven by the replay server of the tests through a realistic edit.

    PYTHONPATH=.:tests python docs/tui_screenshot.py

The replay server answers with recorded turns (no model runs), so the speculation figures in the status
bar are the recorded ones and tokens/s is left out. The SVG Textual exports is rasterized with resvg-py
(the `docs` extra), which needs no system libraries.
"""

import asyncio
import os
import tempfile
from pathlib import Path

import resvg_py
from replay import ReplayServer, Turn

from agent.config import Settings
from tools.ot import format_script, ot_diff
from tui.app import RetainApp
from tui.screens import EditApproval

SLUG = '''import re


def slugify(title: str) -> str:
    """A URL path segment for a title."""
    words = re.findall(r"[a-z0-9]+", title.lower())
    return "-".join(words)
'''
FOLDED = SLUG.replace("import re\n", "import re\nimport unicodedata\n").replace(
    '    """A URL path segment for a title."""\n',
    '    """A URL path segment for a title."""\n'
    '    title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()\n',
)
SCRIPT = format_script(ot_diff(SLUG, FOLDED))  # the script a model is taught to write for this change
SPECULATION = {"method": "ngram", "drafted": 64, "accepted": 41, "mean_accepted_length": 2.9}
TURNS = [
    Turn("I'll look at the function first.\n```read slug.py```", completion_tokens=14),
    Turn(
        "`slugify()` drops accented letters instead of folding them: `Crème brûlée` becomes `cr-me-br-l-e`. "
        f"Normalise to ASCII before matching:\n```edit slug.py\n{SCRIPT}\n```",
        completion_tokens=96,
        usage_extra={"speculation": SPECULATION},
    ),
]


async def main(out: Path) -> None:
    root = Path(tempfile.mkdtemp()) / "site"
    root.mkdir()
    (root / "slug.py").write_text(SLUG)
    os.environ["RETAIN_STATE_DIR"] = str(root.parent / "state")
    with ReplayServer(TURNS) as server:
        settings = Settings(model="openai/replay-model", api_base=server.url, tools="text")
        app = RetainApp(settings, root, count_tokens=lambda text: len(text.split()), clock=lambda: 0.0)
        async with app.run_test(size=(110, 34)) as pilot:
            app.query_one("#prompt").cursor_blink = False
            while app.model is None:
                await pilot.pause(0.1)
            app.query_one("#prompt").value = "slugify should keep accented letters as plain ones"
            await pilot.press("enter")
            while not isinstance(app.screen, EditApproval):
                await pilot.pause(0.1)
            await pilot.pause(0.5)
            svg = app.export_screenshot(title="Retain")
    png = resvg_py.svg_to_bytes(svg_string=svg, monospace_family="DejaVu Sans Mono", font_family="DejaVu Sans")
    out.write_bytes(bytes(png))
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main(Path(__file__).parent / "tui.png"))
