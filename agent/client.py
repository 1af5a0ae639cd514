"""One streamed model turn through litellm, with errors sorted by what the caller should do.

litellm is imported on first use (with its cost map read locally, not fetched): it takes seconds.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

PREDICTION_PROVIDERS = ("openai", "hosted_vllm", "mistral")  # take OpenAI's `prediction` field, or ignore it
GROUNDING_PROVIDER = "hosted_vllm"  # local OpenAI-compatible servers: ours and vLLM with Retain's plugin ground edits
RETRY_WINDOW = 60.0  # seconds a turn with no deadline of its own retries a busy or unreachable server for
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 8.0  # seconds between tries: doubled after each
REPEAT_LIMIT = 200  # identical chunks in a row after which a reply is cut: the model is repeating itself


class ModelUnavailable(Exception):
    """The server cannot be reached, rejects the model or the key, or does not speak the streaming protocol:
    nothing the agent can fix (exit 4)."""


class ModelBusy(ModelUnavailable):
    """A failure before the reply began that a moment may cure: connection refused or reset, 429, 503;
    `retry_after`: the seconds a 429 or 503 asked to wait, if it said."""

    retry_after: float | None = None


class ModelTimeout(Exception):
    """The turn did not finish within the time left (exit 3)."""


class ModelFailed(Exception):
    """The server answered with an error for this request (exit 1)."""


class ModelCancelled(Exception):
    """The turn was cancelled while it streamed; `text` is what had arrived by then."""

    def __init__(self, text: str) -> None:
        super().__init__("cancelled while the model was writing")
        self.text = text


@dataclass
class Reply:
    text: str
    tool_calls: list[dict] = field(default_factory=list)  # {"id", "name", "arguments" (JSON text)}
    usage: dict = field(default_factory=dict)  # as the server reported it, extra fields (speculation) included
    # "length" when the reply was cut off at max_tokens, "repetition" when it was cut for repeating one chunk
    finish_reason: str | None = None
    repeated: str | None = None  # with "repetition": the chunk the model kept writing


class _Repetition:
    """Counts a stream's identical chunks in a row, so a model stuck on one (a long `=====` line, one token
    forever) is cut by the agent with a message saying so, rather than by litellm as a server error."""

    def __init__(self) -> None:
        self.chunk, self.run = "", 0

    def stuck(self, chunk: str) -> bool:
        self.run = self.run + 1 if chunk == self.chunk else 1
        self.chunk = chunk
        return self.run >= REPEAT_LIMIT


def _litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    # litellm ends a stream that repeats a chunk 100 times as a server error; repetition is the model's output,
    # which the agent cuts itself (REPEAT_LIMIT) and its budgets end
    litellm.REPEATED_STREAMING_CHUNK_LIMIT = sys.maxsize
    return litellm


def supports_native_tools(model: str) -> bool:
    """Whether litellm knows this model to take native tool calls (unknown models: no)."""
    try:
        return bool(_litellm().supports_function_calling(model=model))
    except Exception:  # litellm raises for models missing from its map
        return False


class Model:
    def __init__(self, name: str, api_base: str | None = None, api_key: str | None = None) -> None:
        self.name = name
        self.api_base = api_base.rstrip("/") if api_base else None
        # OpenAI-compatible local servers need some key; a placeholder is what they expect
        self.api_key = api_key or ("none" if api_base else None)

    @property
    def provider(self) -> str | None:
        try:
            return _litellm().get_llm_provider(model=self.name, api_base=self.api_base)[1]
        except Exception:  # litellm raises for names it cannot place
            return None

    @property
    def takes_prediction(self) -> bool:
        """Whether the provider accepts a `prediction` field (others may reject the request for it)."""
        return self.provider in PREDICTION_PROVIDERS

    def where(self) -> str:
        return self.api_base or f"the {self.name.split('/')[0]} provider's default endpoint"

    def check_reachable(self, timeout: float = 10) -> None:
        """Fail fast with the URL when an OpenAI-compatible server is not listening (only with an api_base)."""
        if not self.api_base:
            return
        try:
            with urllib.request.urlopen(f"{self.api_base}/models", timeout=timeout):
                pass
        except urllib.error.HTTPError:
            return  # something answers; the completion request will say what is wrong
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ModelUnavailable(f"model server unreachable at {self.api_base}: {reason}") from None

    def complete(
        self,
        messages: list[dict],
        *,
        tools: list[dict] | None = None,
        prediction: str | None = None,
        prediction_path: str | None = None,
        max_tokens: int | None = None,
        timeout: float | None = None,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> Reply:
        """Stream one assistant turn, retrying a server that is busy or not there yet (ModelBusy) with backoff
        within `timeout` (else RETRY_WINDOW), saying each retry to `on_retry`; see `_stream_turn`."""
        give_up = time.monotonic() + (timeout or RETRY_WINDOW)
        backoff = FIRST_BACKOFF
        while True:
            left = give_up - time.monotonic()
            try:
                return self._stream_turn(
                    messages,
                    tools=tools,
                    prediction=prediction,
                    prediction_path=prediction_path,
                    max_tokens=max_tokens,
                    timeout=left if timeout else None,
                    on_text=on_text,
                    cancel=cancel,
                )
            except ModelBusy as exc:
                wait = max(backoff, exc.retry_after or 0.0)
                if time.monotonic() + wait >= give_up:
                    raise ModelUnavailable(f"{exc} (tried for {timeout or RETRY_WINDOW:.0f} s)") from None
                if on_retry is not None:
                    on_retry(f"{exc}; trying again in {wait:.1f} s")
                if cancel is not None and cancel.wait(wait):
                    raise ModelCancelled("") from None
                if cancel is None:
                    time.sleep(wait)
                backoff = min(2 * backoff, MAX_BACKOFF)

    def _stream_turn(
        self,
        messages: list[dict],
        *,
        tools: list[dict] | None,
        prediction: str | None,
        prediction_path: str | None,
        max_tokens: int | None,
        timeout: float | None,
        on_text: Callable[[str], None] | None,
        cancel: threading.Event | None,
    ) -> Reply:
        """Stream one assistant turn once; `prediction` is the text the server may draft from (Predicted Outputs).

        With `prediction_path` (the file the prediction is), a local server (`hosted_vllm/…`) is also asked to ground
        the reply's ```edit blocks for that file in it: Retain's server then only lets the model quote text the file
        has. vLLM gets the same request as `vllm_xargs`, which Retain's vLLM plugin grounds and drafts from (a vLLM
        without it ignores them, Retain's server too).

        `on_text` gets each piece of reply text as it arrives. Setting `cancel` stops reading at the next
        chunk and closes the connection (a server that notices stops generating), raising ModelCancelled.
        `timeout` bounds the whole turn: each read waits at most that long, and a stream still going at the
        deadline is closed at its next chunk (ModelTimeout), so a model writing steadily cannot outlast it.
        """
        litellm = _litellm()
        deadline = time.monotonic() + timeout if timeout else None
        kwargs: dict = {"stream": True, "stream_options": {"include_usage": True}}
        if tools:
            kwargs["tools"] = tools
        provider = self.provider
        if prediction is not None and provider in PREDICTION_PROVIDERS:
            kwargs["extra_body"] = {"prediction": {"type": "content", "content": prediction}}
            if prediction_path is not None and provider == GROUNDING_PROVIDER:
                kwargs["extra_body"]["grounding"] = {"mode": "edit", "path": prediction_path}
                # vLLM with Retain's plugin reads the same request from its per-request arguments (flat values)
                kwargs["extra_body"]["vllm_xargs"] = {"prediction": prediction, "grounding": "edit",
                                                      "grounding_path": prediction_path}
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        tap = None
        text: list[str] = []
        calls: dict[int, dict] = {}
        try:
            stream = litellm.completion(
                model=self.name,
                messages=messages,
                api_base=self.api_base,
                api_key=self.api_key,
                timeout=timeout,
                max_retries=0,
                **kwargs,
            )
            close = getattr(getattr(stream, "completion_stream", None), "close", None)
            tap = _StreamTap(stream)
            usage, finish_reason, late = {}, None, False
            repetition, repeated = _Repetition(), None
            for chunk in stream:
                late = deadline is not None and time.monotonic() >= deadline
                if (cancel is not None and cancel.is_set()) or late:
                    break
                if getattr(chunk, "usage", None):
                    usage = chunk.usage.model_dump(exclude_none=True)
                for choice in chunk.choices:
                    finish_reason = choice.finish_reason or finish_reason
                    delta = choice.delta
                    if delta.content:
                        text.append(delta.content)
                        if on_text is not None:
                            on_text(delta.content)
                        if repetition.stuck(delta.content):
                            repeated = delta.content
                    for call in delta.tool_calls or []:
                        slot = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                        slot["id"] = call.id or slot["id"]
                        slot["name"] += call.function.name or ""
                        slot["arguments"] += call.function.arguments or ""
                if repeated is not None:
                    break
        except Exception as exc:
            if tap is not None and tap.unreadable(exc):
                raise self._misbehaving("its stream could not be read", tap) from exc
            raise self._classify(exc, litellm, began=bool(text or calls)) from exc
        if cancel is not None and cancel.is_set():
            if close is not None:
                close()
            raise ModelCancelled("".join(text))
        if late:
            if close is not None:
                close()
            raise ModelTimeout(f"{self.name} at {self.where()}: still writing after {timeout:.0f} s; stream closed")
        if repeated is not None:
            if close is not None:
                close()
            finish_reason = "repetition"
        if problem := tap.problem():
            raise self._misbehaving(problem, tap)
        usage = tap.usage or usage  # the server's own numbers when they could be read, else litellm's
        tool_calls = [{**c, "id": c["id"] or f"call_{i}"} for i, c in sorted(calls.items())]
        return Reply("".join(text), tool_calls, usage, finish_reason, repeated)

    def _misbehaving(self, what: str, tap: _StreamTap) -> ModelUnavailable:
        return ModelUnavailable(
            f"the model server at {self.where()} misbehaved: {what} ({tap.received()}); it is not an "
            "OpenAI-compatible streaming endpoint, so check --api-base and the server"
        )

    def _classify(self, exc: Exception, litellm, began: bool) -> Exception:
        """The error a failed turn is for the caller; `began`: whether any of the reply had arrived."""
        where = f"{self.name} at {self.where()}"
        if isinstance(exc, litellm.Timeout):
            return ModelTimeout(f"{where}: no complete answer in time ({exc})")
        if began:  # the connection broke or the stream ended unfinished: the server died or was stopped
            return ModelUnavailable(f"the model server at {self.where()} stopped in the middle of a reply: {exc}")
        if _connection_failure(exc):
            return ModelBusy(f"model server unreachable at {self.where()}: {exc}")
        if isinstance(exc, litellm.RateLimitError | litellm.ServiceUnavailableError) and not began:
            busy = ModelBusy(f"{where} is busy: {exc}")
            busy.retry_after = _retry_after(exc)
            return busy
        unavailable = (
            litellm.AuthenticationError,
            litellm.PermissionDeniedError,
            litellm.NotFoundError,
            litellm.ServiceUnavailableError,
        )
        if isinstance(exc, unavailable):
            return ModelUnavailable(f"{where} rejected the request: {exc}")
        return ModelFailed(f"{where}: {exc}")


def _retry_after(exc: Exception) -> float | None:
    """The seconds a 429 or 503 answer's Retry-After header asks for, if it gives a number."""
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _connection_failure(exc: BaseException) -> bool:
    """Whether a connection error (refused, reset, DNS) lies anywhere in the exception's chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionError) or type(exc).__name__ in ("APIConnectionError", "ConnectError"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _StreamTap:
    """What a streamed turn brought over the wire: the first bytes received (to tell and quote a server that
    does not speak server-sent events), and the raw fields litellm's chunks drop.

    Our server puts `speculation` in `usage`; vLLM puts per-request `metrics.speculative_decoding` next to it on
    the final chunk (when started with `--per-request-spec-decode-metrics`, as `agent serve --engine vllm` does).
    litellm's stream wrapper reads the provider's chunks from `completion_stream` (an `openai.Stream`, or an
    OpenAI-style handler whose `chunk_parser` turns each raw chunk into a `ModelResponseStream`); those are the
    places the fields are still there, and their httpx response is where the bytes arrive. Other providers
    simply report none.
    """

    HEAD_BYTES = 4096  # bytes kept to check (the first events)
    QUOTE_BYTES = 300  # of which quoted in a message

    def __init__(self, stream) -> None:
        self.usage: dict = {}
        self.head = bytearray()
        self.content_type = ""
        self.watching = False  # whether the bytes are watched (else, for other providers, litellm is trusted)
        inner = getattr(stream, "completion_stream", None)
        if inner is None:
            return
        self._watch_bytes(getattr(inner, "response", None) or getattr(inner, "http_response", None))
        parse = getattr(inner, "chunk_parser", None)
        if callable(parse):

            def parse_keeping_metrics(chunk):
                metrics = chunk.get("metrics") if isinstance(chunk, dict) else None
                if isinstance(metrics, dict) and metrics.get("speculative_decoding"):
                    self.usage["speculation"] = speculation_from_vllm(metrics["speculative_decoding"])
                return parse(chunk)

            inner.chunk_parser = parse_keeping_metrics

        def tee():
            for chunk in inner:
                usage = getattr(chunk, "usage", None)
                if usage is not None and hasattr(usage, "model_dump"):
                    self.usage.update(usage.model_dump(exclude_none=True))
                yield chunk

        stream.completion_stream = tee()

    def _watch_bytes(self, response) -> None:
        """Keep the first bytes the httpx `response` streams."""
        if response is None or not callable(getattr(response, "iter_bytes", None)):
            return
        self.watching = True
        self.content_type = str(getattr(response, "headers", {}).get("content-type", ""))
        original = response.iter_bytes

        def iter_bytes(*args, **kwargs):
            for data in original(*args, **kwargs):
                if len(self.head) < self.HEAD_BYTES:
                    self.head += data[: self.HEAD_BYTES - len(self.head)]
                yield data

        response.iter_bytes = iter_bytes

    def problem(self) -> str | None:
        """Why the stream just read is not OpenAI-style server-sent events, or None when it is (or cannot be
        told: a provider whose bytes are not watched)."""
        if not self.watching:
            return None
        if not self.head:
            return "a streamed request was answered with an empty body"
        if self.content_type and not self.content_type.lower().startswith("text/event-stream"):
            return "a streamed request was answered with something other than server-sent events"
        lines = bytes(self.head).decode("utf-8", "replace").split("\n")
        complete = lines if len(self.head) < self.HEAD_BYTES else lines[:-1]
        data = [line[5:].strip() for line in complete if line.startswith("data:")]
        if not data and len(self.head) < self.HEAD_BYTES:
            return "a streamed request was answered without any stream events"
        if any(not _is_json(payload) for payload in data if payload != "[DONE]"):
            return "its stream events are not JSON"
        return None

    def unreadable(self, exc: BaseException) -> bool:
        """Whether `exc` came from reading a stream the server did send (events that are not JSON)."""
        return bool(self.head) and _in_chain(exc, json.JSONDecodeError)

    def received(self) -> str:
        kind = f"Content-Type {self.content_type or 'missing'}"
        if not self.head:
            return f"{kind}, an empty body"
        quote = bytes(self.head[: self.QUOTE_BYTES]).decode("utf-8", "replace")
        return f"{kind}, received {quote!r}{'…' if len(self.head) > self.QUOTE_BYTES else ''}"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _in_chain(exc: BaseException | None, kind: type) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def speculation_from_vllm(metrics: dict) -> dict:
    """vLLM's per-request `speculative_decoding` metrics in the shape of our server's `speculation` stats."""
    return {
        "method": "vllm",
        "drafted": metrics.get("num_draft_tokens", 0),
        "accepted": metrics.get("num_accepted_draft_tokens", 0),
        "verify_steps": metrics.get("num_spec_steps", 0),
        "mean_accepted_length": round(metrics.get("mean_acceptance_length", 1.0), 3),
    }
