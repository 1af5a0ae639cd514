"""An OpenAI-compatible server on 127.0.0.1 that replays recorded model turns over real HTTP.

Each POST to /v1/chat/completions gets the next recorded turn, streamed as server-sent events when the
request asks for `stream` (with a final usage chunk when `stream_options.include_usage` is set), and
every request body is kept so tests can check what the client sent (messages, prediction, tools).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Turn:
    """One recorded model reply: text and/or native tool calls [(name, arguments dict)], plus extra usage."""

    text: str = ""
    tool_calls: list[tuple[str, dict]] = field(default_factory=list)
    prompt_tokens: int = 100
    completion_tokens: int = 20
    usage_extra: dict = field(default_factory=dict)
    final_chunk_extra: dict = field(default_factory=dict)  # top-level fields of the usage chunk, e.g. vLLM's metrics
    delay: float = 0.0  # seconds before answering: a turn still being generated
    chunk_delay: float = 0.0  # seconds between streamed deltas: a model still writing
    finish_reason: str | None = None  # default: "tool_calls" with tool calls, else "stop"
    raw: str | None = None  # answer with exactly this body instead (a misbehaving server)
    raw_type: str = "text/event-stream"  # the Content-Type sent with `raw`
    status: int = 200  # the HTTP status sent with `raw` (429, 503: a busy server)
    headers: dict[str, str] = field(default_factory=dict)  # sent with `raw`, e.g. Retry-After
    cut_after: int | None = None  # stream this many deltas, then close the connection: a server that died


class ReplayServer:
    """`with ReplayServer([Turn(...), ...]) as server:` then point a client at `server.url`."""

    def __init__(self, turns: list[Turn], port: int = 0, model: str = "replay-model") -> None:
        self.turns = list(turns)
        self.model = model
        self.requests: list[dict] = []
        self.dropped = 0  # streams the client closed before their end
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def next_turn(self, body: dict) -> Turn | None:
        self.requests.append(body)
        return self.turns.pop(0) if self.turns else None


def _handler(server: ReplayServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def handle(self) -> None:
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                server.dropped += 1  # the client gave up on a turn (a timeout or a cancel): nothing to answer

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v1/models":
                return self._json(404, {"error": {"message": f"no route {self.path}"}})
            self._json(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._json(404, {"error": {"message": f"no route {self.path}"}})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            turn = server.next_turn(body)
            if turn is None:
                return self._json(400, {"error": {"message": "the replay has no more recorded turns"}})
            time.sleep(turn.delay)
            if turn.cut_after == 0:
                return self._cut()
            if turn.raw is not None:
                return self._raw(turn)
            usage = {
                "prompt_tokens": turn.prompt_tokens,
                "completion_tokens": turn.completion_tokens,
                "total_tokens": turn.prompt_tokens + turn.completion_tokens,
                **turn.usage_extra,
            }
            if body.get("stream"):
                self._stream(turn, usage, bool((body.get("stream_options") or {}).get("include_usage")))
            else:
                self._json(200, _completion(server.model, turn, usage))

        def _json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _cut(self) -> None:
            """Close the connection without another byte, as a killed server does."""
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _raw(self, turn: Turn) -> None:
            data = turn.raw.encode()
            self.send_response(turn.status)
            for name, value in turn.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", turn.raw_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, turn: Turn, usage: dict, include_usage: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            for number, delta in enumerate(_deltas(turn)):
                if number == turn.cut_after:
                    return self._cut()
                self._event(_chunk(server.model, [{"index": 0, "delta": delta, "finish_reason": None}]))
                time.sleep(turn.chunk_delay)
            reason = turn.finish_reason or ("tool_calls" if turn.tool_calls else "stop")
            self._event(_chunk(server.model, [{"index": 0, "delta": {}, "finish_reason": reason}]))
            if include_usage:
                self._event(_chunk(server.model, [], usage) | turn.final_chunk_extra)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _event(self, payload: dict) -> None:
            self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
            self.wfile.flush()

    return Handler


def _deltas(turn: Turn) -> list[dict]:
    """The turn cut into small stream deltas, as a server emits them token by token."""
    deltas: list[dict] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": turn.text[i : i + 7]} for i in range(0, len(turn.text), 7)]
    for index, (name, arguments) in enumerate(turn.tool_calls):
        args = json.dumps(arguments)
        head = {"index": index, "id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": ""}}
        deltas.append({"tool_calls": [head]})
        deltas += [
            {"tool_calls": [{"index": index, "function": {"arguments": args[i : i + 9]}}]}
            for i in range(0, len(args), 9)
        ]
    return deltas


def _chunk(model: str, choices: list[dict], usage: dict | None = None) -> dict:
    chunk = {"id": "chatcmpl-replay", "object": "chat.completion.chunk", "created": int(time.time())}
    chunk |= {"model": model, "choices": choices}
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def _completion(model: str, turn: Turn, usage: dict) -> dict:
    message: dict = {"role": "assistant", "content": turn.text or None}
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for i, (name, args) in enumerate(turn.tool_calls)
        ]
    reason = turn.finish_reason or ("tool_calls" if turn.tool_calls else "stop")
    return {
        "id": "chatcmpl-replay",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
        "usage": usage,
    }
