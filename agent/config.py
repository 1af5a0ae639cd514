"""Run settings: command line, then environment, then `agent.toml` (the workspace's, then the user's).

# agent.toml
model = "hosted_vllm/google/gemma-4-26B-A4B-it"
api_base = "http://127.0.0.1:8000/v1"
api_key_env = "MY_SERVER_KEY"   # the name of the variable holding the key, never the key itself
max_steps = 40
turn_tokens = 2048               # one reply's output tokens at most
timeout = 600                    # `agent run`'s wall-clock seconds (0 = no limit)
shell = "auto"
edit_format = "search-replace"   # how the model writes edits: ot (default), ot-counts, ot-lines, search-replace, udiff
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, get_args

from tools.formats import agent_format, agent_format_names

ENV = {"model": "RETAIN_MODEL", "api_base": "RETAIN_API_BASE", "edit_format": "RETAIN_EDIT_FORMAT"}
ShellMode = Literal["never", "ask", "auto"]
ApproveMode = Literal["auto", "never"]
ToolMode = Literal["auto", "native", "text"]
SHELL_MODES: tuple[str, ...] = get_args(ShellMode)
APPROVE_MODES: tuple[str, ...] = get_args(ApproveMode)
TOOL_MODES: tuple[str, ...] = get_args(ToolMode)

EMBEDDED = "embedded"
TURN_TOKENS = 2048  # one reply's output tokens at most: room for any one edit, not for a runaway reply
RUN_TIMEOUT = 600.0  # `agent run`'s default wall-clock limit, so a CI job cannot hang on a stuck model
DEMO_TURN_TOKENS = 128  # the demo model's defaults: it cannot act, so a run only shows the machinery
DEMO_TIMEOUT = 90.0

GET_A_MODEL = """\
Get a real model in one of these ways:
  vLLM (a GPU):  agent serve --engine vllm --model google/gemma-4-26B-A4B-it   (or: vllm serve MODEL)
                 then  --model hosted_vllm/google/gemma-4-26B-A4B-it --api-base http://127.0.0.1:8000/v1
  Ollama:        ollama pull qwen2.5-coder:7b
                 then  --model openai/qwen2.5-coder:7b --api-base http://127.0.0.1:11434/v1
  a provider:    export OPENAI_API_KEY=…  then  --model openai/gpt-4.1
                 (ANTHROPIC_API_KEY with anthropic/…, GEMINI_API_KEY with gemini/…, any litellm provider)"""

HOW_TO_CONFIGURE = """\
no model is configured.
{get_a_model}
Set it once: RETAIN_MODEL / RETAIN_API_BASE, or  model = "…"  and  api_base = "…"  in agent.toml in the
workspace or in {user_config}; `agent` (the app) finds running servers and writes that file for you.
Any litellm model name works (provider/model); the provider's key is read from its usual variable."""

DEMO_REFUSED = """\
the embedded model is a demo: a 270M base model; it shows the machinery, it does not solve tasks.
{get_a_model}
To watch the demo anyway, add --allow-demo-model (or allow_demo_model = true in agent.toml); its runs stop
within about {timeout:g} s."""


class ConfigError(Exception):
    """Settings that cannot be used; the message says what to change."""


@dataclass
class Settings:
    model: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    max_steps: int = 30
    max_tokens: int | None = None  # prompt + completion tokens over the run
    turn_tokens: int | None = None  # one reply's output tokens (None: TURN_TOKENS, or DEMO_TURN_TOKENS)
    # wall-clock seconds of a run; 0: none. Unset: agent run takes RUN_TIMEOUT (DEMO_TIMEOUT), the app none
    timeout: float | None = None
    allow_demo_model: bool = False  # the embedded model is refused without it
    shell: ShellMode = "ask"
    approve: ApproveMode = "auto"
    tools: ToolMode = "auto"
    edit_format: str = "ot"  # a name of tools.formats.agent_format_names()

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "retain" / "agent.toml"


def load_settings(cli: dict, workspace: Path, env: dict | None = None) -> Settings:
    """Merge the sources, highest first: `cli` values that are not None, env, workspace toml, user toml."""
    env = os.environ if env is None else env
    merged: dict = {}
    for path in (user_config_path(), workspace / "agent.toml"):
        merged |= _read_toml(path)
    merged |= {key: env[var] for key, var in ENV.items() if env.get(var)}
    merged |= {key: value for key, value in cli.items() if value is not None}
    settings = Settings(**merged)
    _check(settings)
    return settings


def require_model(settings: Settings, found: str = "") -> str:
    """The model to use, or a ConfigError saying how to get one; `found` lists what was detected running."""
    if not settings.model:
        message = HOW_TO_CONFIGURE.format(get_a_model=GET_A_MODEL, user_config=user_config_path())
        raise ConfigError(f"{message}\n{found}" if found else message)
    if is_demo(settings) and not settings.allow_demo_model:
        raise ConfigError(DEMO_REFUSED.format(get_a_model=GET_A_MODEL, timeout=DEMO_TIMEOUT))
    return settings.model


def save_model(path: Path, model: str, api_base: str | None, allow_demo_model: bool = False) -> None:
    """Write a model choice into the agent.toml at `path`, keeping the file's other settings (and comments)."""
    chosen = {"model": model, "api_base": api_base, "allow_demo_model": allow_demo_model or None}
    lines = [f"{key} = {json.dumps(value)}" for key, value in chosen.items() if value is not None]
    if path.is_file():
        setting = re.compile(r"\s*(model|api_base|allow_demo_model)\s*=")
        lines += [line for line in path.read_text(encoding="utf-8").splitlines() if not setting.match(line)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def is_demo(settings: Settings) -> bool:
    return settings.model == EMBEDDED


def turn_tokens(settings: Settings) -> int:
    """One reply's output cap: the setting, else the default (smaller for the demo model, which only rambles)."""
    if settings.turn_tokens is not None:
        return settings.turn_tokens
    return DEMO_TURN_TOKENS if is_demo(settings) else TURN_TOKENS


def run_timeout(settings: Settings) -> float | None:
    """`agent run`'s wall-clock limit in seconds: the setting (0 = none), else the default; None = no limit."""
    if settings.timeout is not None:
        return settings.timeout or None
    return DEMO_TIMEOUT if is_demo(settings) else RUN_TIMEOUT


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if "api_key" in data:
        raise ConfigError(f"{path}: keep keys out of files; set api_key_env to the name of a variable holding it")
    known = {f.name: f.type for f in fields(Settings)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return data


def _check(settings: Settings) -> None:
    for name, allowed in (("shell", SHELL_MODES), ("approve", APPROVE_MODES), ("tools", TOOL_MODES)):
        if getattr(settings, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {getattr(settings, name)!r}")
    for name in ("max_steps", "max_tokens", "turn_tokens", "timeout"):
        value, least = getattr(settings, name), 0 if name == "timeout" else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < least):
            kind = "a number of seconds (0 for no limit)" if name == "timeout" else "a positive number"
            raise ConfigError(f"{name} must be {kind}, not {value!r}")
    try:
        agent_format(settings.edit_format)
    except ValueError as exc:
        raise ConfigError(f"edit_format: {exc}") from None
    if not isinstance(settings.allow_demo_model, bool):
        raise ConfigError(f"allow_demo_model must be true or false, not {settings.allow_demo_model!r}")
    for name in ("model", "api_base", "api_key_env"):
        value = getattr(settings, name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, not {value!r}")


def add_agent_options(parser: argparse.ArgumentParser) -> None:
    """The model and loop settings `agent run` and `agent tui` share (None = not given: lower sources decide)."""
    parser.add_argument("--model", help="litellm model name (provider/model), or 'embedded'")
    parser.add_argument("--api-base", help="the model server's base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--max-steps", type=positive(int), help="model turns per task at most (default 30)")
    parser.add_argument(
        "--turn-tokens", type=positive(int), help=f"output tokens of one reply at most (default {TURN_TOKENS})"
    )
    parser.add_argument(
        "--allow-demo-model",
        action="store_true",
        default=None,
        help="use --model embedded anyway: a 270M base model that shows the machinery but does not solve tasks",
    )
    parser.add_argument("--shell", choices=SHELL_MODES, help="run shell commands? (default ask)")
    parser.add_argument("--tools", choices=TOOL_MODES, help="native tool calls or fenced blocks")
    parser.add_argument(
        "--edit-format",
        type=edit_format_name,
        metavar="NAME",
        help=f"how the model writes edits: {', '.join(agent_format_names())} (default ot, OT edit scripts)",
    )


def edit_format_name(name: str) -> str:
    """An argparse type: the name of an edit format the agent offers (else a usage error listing them)."""
    try:
        return agent_format(name).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(kind, zero: bool = False):
    """An argparse type: a number of `kind` above zero (or zero too, when `zero`)."""

    def parse(text: str):
        value = kind(text)
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if zero else 'positive'}, not {text}")
        return value

    parse.__name__ = kind.__name__
    return parse
