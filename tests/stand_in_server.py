"""A stand-in for `python -m decoding.serving.server` in tests: same arguments and readiness contract, replayed turns.

    python tests/stand_in_server.py --host 127.0.0.1 --port PORT [--turns TURNS.json]

It prints the base URL once listening, serves /v1/models (model "stand-in") and replays the turns
(a JSON list of Turn fields; by default one `done` turn) on /v1/chat/completions.
"""

import argparse
import json
from pathlib import Path

from replay import ReplayServer, Turn

parser = argparse.ArgumentParser()
parser.add_argument("--host", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--turns")
args = parser.parse_args()
assert args.host == "127.0.0.1", "servers listen on the loopback interface only"
recorded = json.loads(Path(args.turns).read_text()) if args.turns else [{"text": "```done\nok\n```"}]
turns = [Turn(**fields) for fields in recorded]
server = ReplayServer(turns, port=args.port, model="stand-in")
print(f"Serving stand-in at {server.url}", flush=True)
server.serve_forever()
