"""OpenAI-compatible HTTP server for the embedded engine (standard library only).

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions, streamed (SSE) or not, and GET /metrics
(Prometheus text format: requests running, queued and by outcome, tokens, drafted and accepted tokens, grounding).

Under load: every connection is accepted (the listen backlog is the kernel's largest) and handled on its own thread,
but generation runs on a single worker thread, because one CPU forward at a time is what the engine does fastest.
Requests wait for it in a bounded FIFO queue (`--max-queued`); beyond it a request is answered at once with
`429 Too Many Requests`, a `Retry-After` header (the recent seconds per request) and an OpenAI-style error, which
OpenAI's and litellm's clients retry. A client that disconnects cancels its request: a queued one is dropped
without running and frees its place at once, a running one stops at its next token.

The HTTP layer is `http.server`. uvicorn/Starlette would take over header parsing and SSE framing (some sixty lines
here) but not what this server adds to HTTP (the queue, cancellation, Host checks, body limits, the metrics text),
and would put two dependencies and an event loop in front of a worker that must stay one thread.

Extensions: `prediction: {"type": "content", "content": "..."}` is source text the drafters copy from (OpenAI
Predicted Outputs' shape), `speculation: "off" | "ngram" | "cursor" | "mtp" | "hybrid" | "auto"` picks the drafter
(auto = hybrid), `top_k` limits sampling. `usage` reports `speculation = {method, drafted, accepted,
target_forwards, mean_accepted_length, accepted_by}` (every drafter's totals; accepted_by: accepted draft tokens per
drafter that proposed them, e.g. {"ngram": 40, "mtp": 12}) and, only for a request that sent a `prediction`, OpenAI's
`completion_tokens_details.accepted_prediction_tokens` / `rejected_prediction_tokens`: the draft tokens copied from
that prediction which the model accepted / rejected (see PredictionTally).

`grounding: "off" | "edit" | {"mode": "edit", "path": "src/app.py"}` (default "edit" when the request sends a
`prediction` or its prompt ends inside a grounded block): inside ```edit blocks (for `path`, when given) the model
may only write a well-formed edit script whose quoted text the file has, and inside ```search-replace PATH and
```diff PATH blocks only SEARCH lines, or a hunk's context and removed lines, that are the file's lines in order and
land in one place (`tools.grounding`, asked token by token by `decoding.engine.grounding`);
`usage.grounding = {blocks, constrained_tokens, released_blocks}` reports it.

A prefix cache keeps the keys and values of recent prompts and outputs (`decoding.engine.prefix_cache`): a request that
shares a prefix with one before prefills only the rest, and `usage.prompt_tokens_details.cached_tokens` says how
many prompt tokens it reused, as OpenAI's does.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import select
import socket
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from decoding.drafting.drafters import SPECULATION_METHODS, make_drafter
from decoding.drafting.mtp import MTPError
from decoding.engine.generation import Generation, GenerationRequest, SpecStats
from decoding.engine.grounding import (
    GROUNDING_MODES,
    PROMPT_TAIL,
    EditGrounding,
    GroundingMode,
    GroundingStats,
    vocabulary,
)
from decoding.engine.loading import WEIGHT_FORMATS, WEIGHTS_HELP, LoadedModel, load_model
from decoding.engine.prefix_cache import DEFAULT_MAX_BYTES, PrefixCachingTarget
from decoding.engine.sampling import SamplingParams
from decoding.engine.target import GemmaTarget, Target, make_target
from decoding.engine.threads import pin_threads
from decoding.serving.chat import MessageError, gemma_chat_prompt, stop_token_ids, text_content
from tools.command_line import parse_arguments
from tools.grounding.reply import opens_edit_block

DEFAULT_MAX_TOKENS = 512
MAX_BODY_BYTES = 16 << 20
MAX_SEED = 2**63 - 1  # torch's generator takes a 64-bit seed
CLIENT_CHECK_SECONDS = 0.2  # how often a request waiting for its next event checks its client is still there
DEFAULT_MAX_QUEUED = 64  # requests waiting for the worker; one more gets a 429
READ_TIMEOUT = 30.0  # seconds a client may take to send its headers and body
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")


class RequestError(Exception):
    """A client mistake: becomes a 4xx JSON error naming the offending parameter."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


class QueueFull(RequestError):
    """Every place in the queue is taken: a 429 telling the client when to try again."""

    def __init__(self, capacity: int, retry_after: int):
        super().__init__(
            f"the server is busy: {capacity} requests are waiting for the model (agent serve --max-queued); "
            f"retry after {retry_after} s", status=429, code="queue_full")
        self.retry_after = retry_after


# ---------------------------------------------------------------------------------------------------------------
# Request parsing


def _number(body: dict, name: str, kind, default, lo=None, hi=None, why: str = ""):
    """The number `name` of the body within [lo, hi] (None: unbounded), else a RequestError saying what is allowed;
    `why` explains a limit that is this server's own."""
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, kind):
        raise RequestError(f"{name} must be a {'integer' if kind is int else 'number'}", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value}", name)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RequestError(f"{name} must be {_allowed(lo, hi)}, got {value}{f' ({why})' if why else ''}", name)
    return value


def _allowed(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"{lo}" if lo == hi else f"between {lo} and {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


def _check_encodable(text: str, param: str) -> None:
    """JSON can carry half a surrogate pair (a `\\ud83d` cut from its partner); no tokenizer can encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(
            f"{param} holds a lone surrogate (\\u{ord(text[e.start]):04x} at character {e.start}): not valid Unicode "
            "text; send the whole pair or the character itself", param
        ) from e


@dataclass(eq=False)  # each job is itself: two identical requests are two jobs in the queue
class Job:
    chat: bool
    prompt: str
    max_tokens: int
    sampling: SamplingParams
    speculation: str
    prediction: str | None
    stop: list[str]
    stream: bool
    include_usage: bool
    grounding: GroundingMode = "off"
    grounding_path: str | None = None  # only ```edit blocks for this path are grounded in the prediction
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)


def parse_request(body, chat: bool, model_name: str) -> Job:
    """Validate an OpenAI request body into a Job, raising RequestError on the first problem."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if body.get("model") not in (None, model_name):
        raise RequestError(
            f"model {body['model']!r} does not exist; this server serves {model_name!r}",
            "model",
            status=404,
            code="model_not_found",
        )
    if chat:
        try:
            prompt = gemma_chat_prompt(body.get("messages"))
        except MessageError as e:
            raise RequestError(str(e), e.param) from e
    else:
        given = body.get("prompt")
        if isinstance(given, list) and len(given) == 1 and isinstance(given[0], str):
            given = given[0]
        if not isinstance(given, str) or not given:
            raise RequestError("prompt must be a non-empty string", "prompt")
        prompt = given
    for unsupported in ("logprobs", "tools", "functions", "suffix", "echo", "best_of"):
        if body.get(unsupported):  # absent, null, false or empty all mean "not used"
            raise RequestError(f"{unsupported} is not supported by this server", unsupported)
    _number(body, "n", int, 1, 1, 1, why="this server returns one choice per request; send n requests for more")
    max_tokens = _number(body, "max_completion_tokens", int, None, 1, None)
    max_tokens = max_tokens or _number(body, "max_tokens", int, DEFAULT_MAX_TOKENS, 1, None)
    top_p = float(_number(body, "top_p", (int, float), 1.0, 0, 1))
    if top_p == 0:
        raise RequestError("top_p must be greater than 0", "top_p")
    sampling = SamplingParams(
        temperature=float(_number(body, "temperature", (int, float), 1.0, 0, 2)),
        top_p=top_p,
        top_k=_number(body, "top_k", int, 0, 0, None),
        seed=_number(body, "seed", int, None, 0, MAX_SEED),
    )
    speculation = body.get("speculation", "auto")
    if speculation not in SPECULATION_METHODS:
        raise RequestError(f"speculation must be one of {', '.join(SPECULATION_METHODS)}", "speculation")
    prediction = body.get("prediction")
    if prediction is not None:
        if not isinstance(prediction, dict) or prediction.get("type") != "content":
            raise RequestError('prediction must be {"type": "content", "content": ...}', "prediction")
        try:
            prediction = text_content(prediction.get("content"), "prediction.content")
        except MessageError as e:
            raise RequestError(str(e), e.param) from e
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a non-empty string or a list of up to 4 of them", "stop")
    for param, text in (("messages" if chat else "prompt", prompt), ("prediction.content", prediction or ""),
                        *(("stop", s) for s in stop)):
        _check_encodable(text, param)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    grounding, grounding_path = _grounding(body.get("grounding"), prediction, prompt)
    return Job(
        chat, prompt, max_tokens, sampling, speculation, prediction, stop, stream, bool(options.get("include_usage")),
        grounding, grounding_path,
    )


def _grounding(given, prediction: str | None, prompt: str) -> tuple[GroundingMode, str | None]:
    """(mode, path) from the request's `grounding`: "off", "edit" or {"mode": ..., "path": ...}; absent means
    "edit" when the request sends the file (`prediction`) or its prompt ends inside an ```edit block."""
    path = None
    if isinstance(given, dict):
        unknown = set(given) - {"mode", "path"}
        if unknown:
            raise RequestError(f"grounding has no field {sorted(unknown)[0]!r}; it takes mode and path", "grounding")
        path = given.get("path")
        if path is not None and (not isinstance(path, str) or not path):
            raise RequestError("grounding.path must be a non-empty string", "grounding")
        given = given.get("mode", "edit")
    if given is None:
        return ("edit" if prediction is not None or opens_edit_block(prompt[-PROMPT_TAIL:]) else "off"), None
    if given not in GROUNDING_MODES:
        raise RequestError('grounding must be "off", "edit" or {"mode": "edit", "path": "..."}', "grounding")
    return given, path


# ---------------------------------------------------------------------------------------------------------------
# Generation worker


class TextStream:
    """Incremental detokenization with stop strings: `push(tokens)` returns text that is safe to send."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.tokens: list[int] = []
        self.sent = 0
        self.text = ""
        self.stopped = False
        self._hold = max((len(s) - 1 for s in stop), default=0)

    def push(self, tokens: list[int], final: bool = False) -> str:
        self.tokens.extend(tokens)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        end = len(self.text)
        for s in self.stop:
            at = self.text.find(s)
            if at != -1 and at < end:
                end, self.stopped = at, True
        if not (self.stopped or final):
            end -= self._hold
            while end > self.sent and self.text[end - 1] == "\ufffd":  # wait for the rest of a UTF-8 sequence
                end -= 1
        if end <= self.sent:
            return ""
        out, self.sent = self.text[self.sent : end], end
        return out


class Engine(Protocol):
    """What the scheduler runs jobs on: `run` puts a job's text on its events as ("delta", text) and returns
    (finish reason, usage); a RequestError it raises is the client's 4xx."""

    name: str

    def warm_up(self) -> None: ...

    def run(self, job: Job) -> tuple[str, Usage]: ...


class Service:
    """The loaded model, generating one job at a time (the scheduler's worker calls `run`).

    `prefix_cache_bytes` bounds the prefix cache's snapshots (0: no prefix cache); it needs our Gemma target.
    `weights`: the target's weight format (`decoding.engine.weights`; None: `engine.target.resolve_weights`).
    """

    def __init__(self, loaded: LoadedModel, target_kind: str = "auto", prefix_cache_bytes: int = DEFAULT_MAX_BYTES,
                 weights: str | None = None):
        self.loaded = loaded
        self.name = loaded.name
        self.tokenizer = loaded.tokenizer
        # what drafters that read the model are given
        self.model_target = make_target(loaded.model, target_kind, weights)
        self.target: Target = self.model_target
        if prefix_cache_bytes and isinstance(self.model_target, GemmaTarget):
            self.target = PrefixCachingTarget(self.model_target, prefix_cache_bytes)
        self.context_length = getattr(loaded.model.config, "max_position_embeddings", 8192)
        self.eos_ids = stop_token_ids(self.tokenizer)

    def warm_up(self) -> None:
        try:
            vocabulary(self.tokenizer)  # grounding's index of the vocabulary (about a second), before any request
        except Exception as e:  # grounded requests will fail with it; every other request must still be served
            print(f"agent serve: grounded decoding is unavailable: {e}", file=sys.stderr)

    def run(self, job: Job) -> tuple[str, Usage]:
        prompt_ids = self.tokenizer(job.prompt).input_ids
        check_context(len(prompt_ids), job.max_tokens, self.context_length, job.chat)
        sources = [self.tokenizer(job.prediction, add_special_tokens=False).input_ids] if job.prediction else []
        try:
            drafter = make_drafter(job.speculation, tokenizer=self.tokenizer, target=self.model_target)
        except MTPError as e:
            raise RequestError(str(e), "speculation") from e
        tally = None
        if job.prediction is not None:
            tally = PredictionTally(drafter, job.prediction, self.tokenizer, len(prompt_ids))
            drafter = tally if drafter is not None else None
        request = GenerationRequest(
            prompt=prompt_ids,
            max_new_tokens=job.max_tokens,
            sampling=job.sampling,
            drafter=drafter,
            sources=sources,
            source_text=job.prediction or None,
            stop_ids=self.eos_ids,
            grounding=self._grounding(job),
        )
        generation = Generation(self.target, request)
        text = TextStream(self.tokenizer, job.stop)
        for chunk in generation:
            delta = text.push(chunk)
            if delta:
                job.events.put(("delta", delta))
            if text.stopped or job.cancelled.is_set():
                break
        delta = text.push([], final=True)
        if delta:
            job.events.put(("delta", delta))
        finish = "stop" if text.stopped else generation.finish_reason or "stop"
        cached = self.target.reused if isinstance(self.target, PrefixCachingTarget) else 0
        predicted = None if tally is None else tally.counts(text.tokens)
        grounded = None if request.grounding is None else request.grounding.stats
        return finish, Usage(len(prompt_ids), cached, len(text.tokens), generation.stats, predicted, grounded)

    def _grounding(self, job: Job) -> EditGrounding | None:
        if job.grounding == "off":
            return None
        vocab = vocabulary(self.tokenizer)
        return EditGrounding(vocab, job.prediction, self.eos_ids, job.grounding_path, job.prompt[-PROMPT_TAIL:])


def check_context(prompt_tokens: int, max_tokens: int, context_length: int, chat: bool) -> None:
    """Refuse a request that cannot fit, blaming what does not fit: the prompt itself, or the tokens asked for."""
    prompt = "messages" if chat else "prompt"
    if prompt_tokens >= context_length:
        raise RequestError(
            f"the {prompt} are {prompt_tokens} tokens, but this model's context length is {context_length} "
            f"(including the reply): shorten the {prompt}",
            prompt,
            code="context_length_exceeded",
        )
    if prompt_tokens + max_tokens > context_length:
        raise RequestError(
            f"the {prompt} ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceed this model's context length "
            f"{context_length}: set max_tokens to at most {context_length - prompt_tokens}, or shorten the {prompt}",
            "max_tokens",
            code="context_length_exceeded",
        )


class PredictionTally:
    """The request's drafter, counting the draft tokens it copied from the request's `prediction`: what OpenAI's
    accepted_prediction_tokens / rejected_prediction_tokens report, rather than every drafter's totals.

    A draft counts when a copying drafter proposed it (not the MTP head, which reads no text) and its text occurs in
    the prediction; its accepted part is how far the output agrees with it, which is what verification accepted.
    """

    def __init__(self, drafter, prediction: str, tokenizer, prompt_length: int) -> None:
        self.drafter, self.prediction, self.tokenizer = drafter, prediction, tokenizer
        self.name = drafter.name if drafter is not None else "off"
        self.prompt_length = prompt_length
        self.drafts: list[tuple[int, list[int]]] = []  # (output position of its first token, its tokens)

    def propose(self, context, k: int):
        draft = self.drafter.propose(context, k)
        tokens = draft.tokens[: context.limit if draft.self_sized and context.limit else k]  # what is verified
        copied = (draft.source or self.name) != "mtp"
        if tokens and copied and self.tokenizer.decode(tokens) in self.prediction:
            self.drafts.append((len(context.tokens) - self.prompt_length, list(tokens)))
        return draft

    def counts(self, output: list[int]) -> tuple[int, int]:
        """(accepted, rejected) prediction tokens, given the tokens the request generated."""
        accepted = drafted = 0
        for at, tokens in self.drafts:
            agree = 0
            while agree < len(tokens) and at + agree < len(output) and output[at + agree] == tokens[agree]:
                agree += 1
            accepted, drafted = accepted + agree, drafted + len(tokens)
        return accepted, drafted - accepted


@dataclass
class Usage:
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose keys and values came from the prefix cache
    completion_tokens: int
    stats: SpecStats
    predicted: tuple[int, int] | None = None  # (accepted, rejected) prediction tokens; None: no prediction sent
    grounding: GroundingStats | None = None  # None: the request was not grounded

    def as_dict(self) -> dict:
        """OpenAI's `usage` object with our `speculation` figures (every drafter's totals)."""
        report: dict = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }
        if self.predicted is not None:
            accepted, rejected = self.predicted
            report["completion_tokens_details"] = {
                "accepted_prediction_tokens": accepted,
                "rejected_prediction_tokens": rejected,
            }
        report["speculation"] = self.stats.as_dict()
        if self.grounding is not None:
            report["grounding"] = asdict(self.grounding)
        return report


# ---------------------------------------------------------------------------------------------------------------
# Queue and metrics

OUTCOMES = ("ok", "error", "rejected", "cancelled")


class Scheduler:
    """A bounded FIFO queue in front of the engine's single worker thread.

    `submit` raises QueueFull when `capacity` jobs already wait; `cancel` (the client left) drops a waiting job at
    once, and a running one stops at its next token. `metrics` counts what happened to each request.
    """

    def __init__(self, engine: Engine, capacity: int = DEFAULT_MAX_QUEUED):
        self.engine, self.capacity = engine, capacity
        self.metrics = Metrics()
        self.waiting: deque[Job] = deque()
        self.running: Job | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._seconds_per_job = 1.0  # a running mean of how long a job holds the worker, for Retry-After
        threading.Thread(target=self._work, name="decoding-worker", daemon=True).start()

    def submit(self, job: Job) -> None:
        with self._changed:
            if len(self.waiting) >= self.capacity + (self.running is None):  # an idle worker takes one at once
                self.metrics.count("rejected")
                raise QueueFull(self.capacity, max(1, math.ceil(self._seconds_per_job)))
            self.waiting.append(job)
            self._changed.notify()

    def cancel(self, job: Job) -> None:
        """The job's client left: nobody will read its answer."""
        job.cancelled.set()  # a running job stops at its next token and is counted when it does
        with self._changed:
            if job in self.waiting:
                self.waiting.remove(job)
                self.metrics.count("cancelled")

    def close(self) -> None:
        """Stop the worker once its running job ends; waiting jobs are left unanswered."""
        with self._changed:
            self._closed = True
            self._changed.notify()

    def gauges(self) -> tuple[int, int]:
        """(running, waiting) requests."""
        with self._changed:
            return int(self.running is not None), len(self.waiting)

    def _next(self) -> Job | None:
        with self._changed:
            while not self.waiting and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            self.running = self.waiting.popleft()
            return self.running

    def _work(self) -> None:
        self.engine.warm_up()
        while (job := self._next()) is not None:
            started = time.monotonic()
            outcome, last = self._run(job)
            self.metrics.count(outcome)
            with self._changed:
                self.running = None
                self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * (time.monotonic() - started)
            job.events.put(last)  # after the counts: a client that has its answer sees it in /metrics

    def _run(self, job: Job) -> tuple[str, tuple[str, Any]]:
        """Run one job, its text going to its client: (its outcome, its last event)."""
        try:
            finish, usage = self.engine.run(job)
        except RequestError as e:
            return "error", ("error", e)
        except Exception as e:  # a bug must fail this request, not the server
            return "error", ("error", RequestError(f"internal error: {e}", status=500, code="internal_error"))
        self.metrics.add(usage)
        return "cancelled" if job.cancelled.is_set() else "ok", ("done", (finish, usage))


class Metrics:
    """Counters since the server started, shown by GET /metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
        self.tokens: Counter[str] = Counter(prompt=0, cached=0, generated=0)
        self.drafted: Counter[str] = Counter()  # by speculation method
        self.accepted: Counter[tuple[str, str]] = Counter()  # by (method, drafter that proposed the tokens)
        self.grounding = GroundingStats()

    def count(self, outcome: str) -> None:
        with self._lock:
            self.requests[outcome] += 1

    def add(self, usage: Usage) -> None:
        """The tokens of a request that ran (to its end, or until its client left)."""
        method = usage.stats.method
        with self._lock:
            self.tokens.update(prompt=usage.prompt_tokens, cached=usage.cached_tokens,
                               generated=usage.completion_tokens)
            self.drafted[method] += usage.stats.drafted
            self.accepted.update({(method, by): n for by, n in usage.stats.accepted_by.items()})
            if usage.grounding is not None:
                for name, value in asdict(usage.grounding).items():
                    setattr(self.grounding, name, getattr(self.grounding, name) + value)

    def families(self, running: int, waiting: int) -> list[Family]:
        with self._lock:
            return [
                Family("retain_requests_running", "gauge", "Requests generating now (one engine worker).",
                       [({}, running)]),
                Family("retain_requests_queued", "gauge", "Requests waiting for the engine worker.", [({}, waiting)]),
                Family("retain_requests_total", "counter",
                       "Requests by outcome: ok, error, rejected (queue full, 429), cancelled (client left).",
                       [({"outcome": o}, n) for o, n in self.requests.items()]),
                Family("retain_prompt_tokens_total", "counter", "Prompt tokens of requests that ran.",
                       [({}, self.tokens["prompt"])]),
                Family("retain_prompt_cached_tokens_total", "counter", "Prompt tokens reused from the prefix cache.",
                       [({}, self.tokens["cached"])]),
                Family("retain_generation_tokens_total", "counter", "Tokens generated.",
                       [({}, self.tokens["generated"])]),
                Family("retain_spec_drafted_tokens_total", "counter", "Draft tokens proposed, by speculation method.",
                       [({"method": m}, n) for m, n in sorted(self.drafted.items())]),
                Family("retain_spec_accepted_tokens_total", "counter",
                       "Draft tokens accepted, by speculation method and the drafter that proposed them.",
                       [({"method": m, "drafter": d}, n) for (m, d), n in sorted(self.accepted.items())]),
                Family("retain_grounding_blocks_total", "counter", "Grounded edit blocks opened.",
                       [({}, self.grounding.blocks)]),
                Family("retain_grounding_constrained_tokens_total", "counter",
                       "Tokens where grounding refused the model's own choice.",
                       [({}, self.grounding.constrained_tokens)]),
                Family("retain_grounding_released_blocks_total", "counter",
                       "Grounded blocks decoded freely because no token was allowed.",
                       [({}, self.grounding.released_blocks)]),
            ]


@dataclass
class Family:
    """One metric in Prometheus' text format: its samples are (labels, value)."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: list[tuple[dict[str, str], float]]


def prometheus_text(families: list[Family]) -> str:
    """The text exposition format, version 0.0.4 (what GET /metrics answers)."""
    lines = []
    for family in families:
        lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
        for labels, value in family.samples:
            shown = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
            lines.append(f"{family.name}{{{shown}}} {value}" if shown else f"{family.name} {value}")
    return "\n".join(lines) + "\n"


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ---------------------------------------------------------------------------------------------------------------
# HTTP


def _bound_address(server) -> tuple[str, int]:
    """(host, port) a TCP server listens on."""
    host, port = server.server_address[:2]
    return str(host), int(port)


class Handler(BaseHTTPRequestHandler):
    """One connection. Only what a local OpenAI client sends is accepted: JSON bodies, a loopback or bound Host
    (a web page the user visits cannot drive the server through DNS rebinding or a simple form post), no CORS."""

    service: Engine  # set on the subclass made by make_server
    scheduler: Scheduler
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT  # a half-sent request does not hold its thread forever

    def log_message(self, format, *args):  # quiet: one line per request is noise in a terminal agent
        pass

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_error(self, error: RequestError) -> None:
        kind = "invalid_request_error" if error.status < 500 else "server_error"
        headers = None
        if isinstance(error, QueueFull):
            kind, headers = "rate_limit_error", {"Retry-After": str(error.retry_after)}
        payload = {"error": {"message": str(error), "type": kind, "param": error.param, "code": error.code}}
        self._send_json(error.status, payload, headers)

    def _host_allowed(self) -> bool:
        """The Host header names this server: a loopback name or the address it is bound to, with its port."""
        host = self.headers.get("Host")
        if host is None:
            return False
        bound, port = _bound_address(self.server)
        if bound in ("0.0.0.0", "::"):  # the user opened the server to the network: any name may reach it
            return True
        if host.startswith("["):  # [::1]:8765
            name, _, rest = host.partition("]")
            name, given_port = name + "]", rest.removeprefix(":")
        else:
            name, _, given_port = host.partition(":")
        if given_port and given_port != str(port):
            return False
        return name.lower() in (*LOOPBACK_NAMES, str(bound), f"[{bound}]")

    def _refuse_foreign(self) -> bool:
        """Answer 403 (and close) to a request whose Host is not this server's; True when refused."""
        if self._host_allowed():
            return False
        self.close_connection = True
        self._send_error(RequestError(
            f"Host {self.headers.get('Host')!r} is not this server's address; this server answers local clients "
            "only (use 127.0.0.1 or localhost)", status=403, code="forbidden_host"))
        return True

    def do_GET(self) -> None:
        if self._refuse_foreign():
            return
        path = self.path.rstrip("/")
        if path == "/v1/models":
            model = {"id": self.service.name, "object": "model", "created": 0, "owned_by": "retain"}
            self._send_json(200, {"object": "list", "data": [model]})
        elif path == "/metrics":
            families = self.scheduler.metrics.families(*self.scheduler.gauges())
            self._send(200, prometheus_text(families).encode(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._send_error(RequestError(f"no route GET {self.path}", status=404, code="not_found"))

    def do_POST(self) -> None:
        if self._refuse_foreign():
            return
        routes = {"/v1/completions": False, "/v1/chat/completions": True}
        path = self.path.rstrip("/")
        try:
            if path not in routes:
                raise RequestError(f"no route POST {self.path}", status=404, code="not_found")
            job = parse_request(self._read_json(), routes[path], self.service.name)
        except Exception as e:  # a malformed request must get an answer, not a dropped connection
            error = e if isinstance(e, RequestError) else RequestError(f"could not read the request: {e}")
            self.close_connection = True  # an unread or bad body must not be taken for the next request
            self.scheduler.metrics.count("error")
            self._send_error(error)
            return
        try:
            self.scheduler.submit(job)
        except QueueFull as full:
            self._send_error(full)
            return
        if job.stream:
            self._stream(job)
        else:
            self._respond(job)

    def _read_json(self):
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise RequestError(
                f"Content-Type must be application/json, not {kind or 'missing'!r}", status=415,
                code="unsupported_media_type")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError("a Content-Length header is required", status=411)
        if int(length) > MAX_BODY_BYTES:
            raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", status=413)
        try:
            return json.loads(self.rfile.read(int(length)))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(f"the request body is not valid JSON: {e}") from e

    def _envelope(self, job: Job, rid: str, created: int, chunk: bool) -> dict:
        obj = ("chat.completion" if job.chat else "text_completion") + (".chunk" if chunk and job.chat else "")
        return {"id": rid, "object": obj, "created": created, "model": self.service.name}

    def _choice(self, job: Job, text: str | None, finish: str | None, delta: bool) -> dict:
        if not job.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if delta:
            return {"index": 0, "delta": {} if text is None else {"content": text}, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}

    def _next_event(self, job: Job) -> tuple[str, Any] | None:
        """The job's next event; None when its client left first (the job is then cancelled)."""
        while True:
            try:
                return job.events.get(timeout=CLIENT_CHECK_SECONDS)
            except queue.Empty:
                if self._client_gone():
                    self.scheduler.cancel(job)
                    self.close_connection = True
                    return None

    def _respond(self, job: Job) -> None:
        rid, created, parts = self._new_id(job), int(time.time()), []
        while (event := self._next_event(job)) is not None:
            kind, value = event
            if kind == "delta":
                parts.append(value)
            elif kind == "error":
                self._send_error(value)
                return
            else:
                finish, used = value
                payload = self._envelope(job, rid, created, chunk=False)
                payload["choices"] = [self._choice(job, "".join(parts), finish, delta=False)]
                payload["usage"] = used.as_dict()
                self._send_json(200, payload)
                return

    def _stream(self, job: Job) -> None:
        rid, created = self._new_id(job), int(time.time())
        event = self._next_event(job)  # while it waits in the queue
        if event is None:
            return
        if event[0] == "error":
            self._send_error(event[1])
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            if job.chat:
                role = self._envelope(job, rid, created, chunk=True)
                role["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
                self._event(role)
            while event is not None:
                kind, value = event
                chunk = self._envelope(job, rid, created, chunk=True)
                if kind == "delta":
                    chunk["choices"] = [self._choice(job, value, None, delta=True)]
                    self._event(chunk)
                elif kind == "error":
                    self._event({"error": {"message": str(value), "type": "server_error", "code": value.code}})
                    break
                else:
                    finish, used = value
                    chunk["choices"] = [self._choice(job, None, finish, delta=True)]
                    self._event(chunk)
                    if job.include_usage:
                        tail = self._envelope(job, rid, created, chunk=True)
                        tail["choices"], tail["usage"] = [], used.as_dict()
                        self._event(tail)
                    break
                event = self._next_event(job)
            else:
                return  # the client left between tokens
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except OSError:  # the client left, or stopped reading for READ_TIMEOUT: stop generating for it
            self.scheduler.cancel(job)

    def _client_gone(self) -> bool:
        """Whether the client closed its end while waiting for an event (readable at end of file)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _event(self, payload: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()

    @staticmethod
    def _new_id(job: Job) -> str:
        return ("chatcmpl-" if job.chat else "cmpl-") + uuid.uuid4().hex[:24]


class Server(ThreadingHTTPServer):
    """A thread per connection; connections the accept loop has not reached yet wait in the kernel's backlog
    (the largest it allows) rather than being reset, so each gets its answer or its 429."""

    request_queue_size = socket.SOMAXCONN
    daemon_threads = True
    scheduler: Scheduler

    def server_close(self) -> None:
        super().server_close()
        self.scheduler.close()


def make_server(
    service: Engine, host: str = "127.0.0.1", port: int = 8765, max_queued: int = DEFAULT_MAX_QUEUED
) -> Server:
    """An HTTP server bound to host:port (0 = any free port) answering with `service`, `max_queued` requests
    waiting at most; call serve_forever()."""
    scheduler = Scheduler(service, max_queued)
    handler = type("BoundHandler", (Handler,), {"service": service, "scheduler": scheduler})
    server = Server((host, port), handler)
    server.scheduler = scheduler
    return server


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `agent serve`, shared with `python -m decoding.serving.server`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (default: 8765; 0 = any free)")
    parser.add_argument(
        "--engine",
        choices=["embedded"],
        default="embedded",
        help="decoding engine (default: embedded, this process on the CPU; `--engine vllm --help` for vLLM)",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="local Hugging Face model directory or .gguf file (default: the embedded Gemma 3 270M)",
    )
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="model dtype (default: float32)"
    )
    parser.add_argument("--weights", choices=WEIGHT_FORMATS, help=WEIGHTS_HELP)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: the cores other work leaves free)"
    )
    parser.add_argument(
        "--prefix-cache-mb",
        type=int,
        default=DEFAULT_MAX_BYTES >> 20,
        help=f"MiB for snapshots of cached prompts beside the live cache (default: {DEFAULT_MAX_BYTES >> 20}; 0: no "
        "prefix cache at all)",
    )
    parser.add_argument(
        "--max-queued",
        type=int,
        default=DEFAULT_MAX_QUEUED,
        metavar="N",
        help=f"requests that may wait for the model while it generates another (default: {DEFAULT_MAX_QUEUED}); "
        "one more is answered 429 Too Many Requests with Retry-After",
    )


def run_server(
    host: str = "127.0.0.1",
    port: int = 8765,
    model: str | None = None,
    dtype: str = "float32",
    threads: int | None = None,
    engine: str = "embedded",
    prefix_cache_mb: int = DEFAULT_MAX_BYTES >> 20,
    max_queued: int = DEFAULT_MAX_QUEUED,
    weights: str | None = None,
) -> None:
    """Load the model, then serve until interrupted; prints the base URL once ready."""
    if engine != "embedded":
        raise ValueError(f"unknown engine {engine!r}; only 'embedded' is available")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    pin_threads(threads)
    if prefix_cache_mb < 0:
        raise ValueError(f"--prefix-cache-mb must be >= 0, got {prefix_cache_mb}")
    if max_queued < 0:
        raise ValueError(f"--max-queued must be >= 0, got {max_queued}")
    service = Service(load_model(model, dtype), prefix_cache_bytes=prefix_cache_mb << 20, weights=weights)
    server = make_server(service, host, port, max_queued)
    stored = service.model_target.weights if dtype == "float32" else dtype  # the formats apply to float32 models
    print(f"Serving {service.name} ({stored} weights) at http://{host}:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def serve_from_args(args: argparse.Namespace) -> int:
    """Serve with options added by `add_serve_arguments`; a bad option or model path is an error, exit status 2."""
    try:
        run_server(args.host, args.port, args.model, args.dtype, args.threads, args.engine, args.prefix_cache_mb,
                   args.max_queued, args.weights)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m decoding.serving.server") -> int:
    return serve_from_args(parse_arguments(argv, prog, __doc__.splitlines()[0], add_serve_arguments))


if __name__ == "__main__":
    sys.exit(main())
