"""`agent run --model embedded` in its own process, with the stand-in server in place of the embedded one.

python tests/run_with_stand_in.py TURNS.json AGENT-RUN-ARGUMENTS…
"""

import sys
from pathlib import Path

from decoding.serving import launch as embedded
from tui.cli import main

stand_in = Path(__file__).parent / "stand_in_server.py"
embedded.SERVER_COMMAND = (
    sys.executable,
    str(stand_in),
    "--host",
    "127.0.0.1",
    "--port",
    "{port}",
    "--turns",
    sys.argv[1],
)
sys.exit(main(["run", "--model", "embedded", "--allow-demo-model", *sys.argv[2:]]))
