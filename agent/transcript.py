"""The run's transcript: JSONL, one event per line, flushed as it goes, so `--resume` can pick a run up.

Values of environment variables whose names look secret (…KEY, …TOKEN, …SECRET, …PASSWORD) are replaced
by `[redacted $NAME]` in everything written, and in tool output before the model sees it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from tools.text_files import text_lines

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.I)
MIN_SECRET_LENGTH = 6  # shorter values ("1", "yes") would redact ordinary text


class Redactor:
    def __init__(self, env: dict | None = None) -> None:
        env = os.environ if env is None else env
        found = {
            value: name for name, value in env.items() if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH
        }
        self._secrets = sorted(found.items(), key=lambda item: -len(item[0]))  # longest first

    def __call__(self, value):
        """`value` with secrets replaced, recursing into lists and dicts."""
        if isinstance(value, str):
            for secret, name in self._secrets:
                value = value.replace(secret, f"[redacted ${name}]")
            return value
        if isinstance(value, list):
            return [self(item) for item in value]
        if isinstance(value, dict):
            return {key: self(item) for key, item in value.items()}
        return value


class Transcript:
    def __init__(self, path: Path, redact: Redactor) -> None:
        self.path = path
        self.redact = redact
        path.parent.mkdir(parents=True, exist_ok=True)
        # half a surrogate pair (a model's cut escape) is written as its JSON escape, which reads back the same
        self._file = open(path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 -- open for its life

    def write(self, event_type: str, **fields) -> None:
        event = self.redact({"type": event_type, "time": round(time.time(), 3), **fields})
        self._file.write(json.dumps(event, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_events(path: Path) -> list[dict]:
    """The events of a transcript; a last line cut short by a crash is dropped, any other bad line is an error."""
    lines = text_lines(path.read_text(encoding="utf-8"))  # events are written with U+2028 etc. unescaped
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a transcript event (invalid JSON)") from None
    return events
