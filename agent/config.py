"""Run settings: command line, then environment, then `agent.toml` (the workspace's, then the user's).

# agent.toml
model = "hosted_vllm/google/gemma-4-26B-A4B-it"
api_base = "http://127.0.0.1:8000/v1"
api_key_env = "MY_SERVER_KEY"   # the name of the variable holding the key, never the key itself
max_steps = 40
shell = "auto"
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, get_args

ENV = {"model": "RETAIN_MODEL", "api_base": "RETAIN_API_BASE"}
ShellMode = Literal["never", "ask", "auto"]
ApproveMode = Literal["auto", "never"]
ToolMode = Literal["auto", "native", "text"]
SHELL_MODES: tuple[str, ...] = get_args(ShellMode)
APPROVE_MODES: tuple[str, ...] = get_args(ApproveMode)
TOOL_MODES: tuple[str, ...] = get_args(ToolMode)

HOW_TO_CONFIGURE = """\
no model is configured. Choose one in any of these ways:
  agent run TASK.md --model hosted_vllm/google/gemma-4-26B-A4B-it --api-base http://127.0.0.1:8000/v1
  agent run TASK.md --model embedded        (starts the embedded Gemma server on this machine)
  export RETAIN_MODEL=ollama/gemma3 RETAIN_API_BASE=http://127.0.0.1:11434
  or put  model = "…"  and  api_base = "…"  in agent.toml in the workspace or in {user_config}
Any litellm model name works (provider/model); the provider's key is read from its usual variable."""


class ConfigError(Exception):
    """Settings that cannot be used; the message says what to change."""


@dataclass
class Settings:
    model: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    max_steps: int = 30
    max_tokens: int | None = None  # prompt + completion tokens over the run
    timeout: float | None = None  # wall-clock seconds
    shell: ShellMode = "ask"
    approve: ApproveMode = "auto"
    tools: ToolMode = "auto"

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


def require_model(settings: Settings) -> str:
    if not settings.model:
        raise ConfigError(HOW_TO_CONFIGURE.format(user_config=user_config_path()))
    return settings.model


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
    for name in ("max_steps", "max_tokens", "timeout"):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise ConfigError(f"{name} must be a positive number, not {value!r}")
    for name in ("model", "api_base", "api_key_env"):
        value = getattr(settings, name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, not {value!r}")


def add_agent_options(parser: argparse.ArgumentParser) -> None:
    """The model and loop settings `agent run` and `agent tui` share (None = not given: lower sources decide)."""
    parser.add_argument("--model", help="litellm model name (provider/model), or 'embedded'")
    parser.add_argument("--api-base", help="the model server's base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--max-steps", type=positive(int), help="model turns per task at most (default 30)")
    parser.add_argument("--shell", choices=SHELL_MODES, help="run shell commands? (default ask)")
    parser.add_argument("--tools", choices=TOOL_MODES, help="native tool calls or fenced blocks")


def positive(kind):
    """An argparse type: a number of `kind` above zero."""

    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    parse.__name__ = kind.__name__
    return parse
