"""What models this machine can reach without configuration: OpenAI-compatible servers answering on the usual
loopback ports, provider keys present in the environment, and the embedded demo model.

The app's setup screen lists these in that order, and `agent run` names them when no model is configured.
Only loopback is probed, all ports at once with a short timeout, so detection costs well under a second.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agent.config import EMBEDDED

# (what usually listens there, port), in the order they are listed
KNOWN_PORTS: tuple[tuple[str, int], ...] = (
    ("vLLM", 8000),
    ("llama.cpp llama-server", 8080),
    ("Ollama", 11434),
    ("LM Studio", 1234),
    ("agent serve", 8765),
)
PROBE_TIMEOUT = 0.5  # seconds; a local server answers /v1/models in milliseconds
# provider key variable -> a model that provider serves well for coding (the user can change it in agent.toml)
PROVIDER_KEYS: tuple[tuple[str, str], ...] = (
    ("OPENAI_API_KEY", "openai/gpt-4.1"),
    ("ANTHROPIC_API_KEY", "anthropic/claude-sonnet-4-20250514"),
    ("GEMINI_API_KEY", "gemini/gemini-2.5-flash"),
    ("MISTRAL_API_KEY", "mistral/codestral-latest"),
    ("OPENROUTER_API_KEY", "openrouter/qwen/qwen3-coder"),
    ("GROQ_API_KEY", "groq/llama-3.3-70b-versatile"),
    ("DEEPSEEK_API_KEY", "deepseek/deepseek-chat"),
)
DEMO_LABEL = "demo: a 270M base model; it shows the machinery, it does not solve tasks"


@dataclass(frozen=True)
class Choice:
    """One way to reach a model: what the setup screen shows and the settings it writes."""

    shown: str  # the model as the user knows it: the server's id, or the litellm name
    where: str  # what serves it: "vLLM at URL", "key in $VAR", or what the demo is
    model: str  # the litellm name written to agent.toml
    api_base: str | None = None

    @property
    def label(self) -> str:
        return f"{self.shown}  ({self.where})"

    @property
    def demo(self) -> bool:
        return self.model == EMBEDDED


def find_servers(ports: tuple[tuple[str, int], ...] | None = None, timeout: float = PROBE_TIMEOUT) -> list[Choice]:
    """Each model served on a known loopback port, in port order; silent ports are skipped."""
    ports = KNOWN_PORTS if ports is None else ports
    with ThreadPoolExecutor(max_workers=max(1, len(ports))) as pool:
        answers = list(pool.map(lambda entry: _probe(entry[1], timeout), ports))
    found = []
    for (kind, port), models in zip(ports, answers, strict=True):
        api_base = f"http://127.0.0.1:{port}/v1"
        found += [Choice(model, f"{kind} at {api_base}", f"openai/{model}", api_base) for model in models]
    return found


def _probe(port: int, timeout: float) -> list[str]:
    """The model ids an OpenAI-compatible server on this loopback port lists, or [] when none answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=timeout) as response:
            data = json.loads(response.read()).get("data") or []
    except (OSError, ValueError, AttributeError):  # nothing listening, not HTTP, not JSON, not a list of models
        return []
    return [str(entry["id"]) for entry in data if isinstance(entry, dict) and entry.get("id")]


def provider_keys(env: dict | None = None) -> list[Choice]:
    """Providers whose key variable is set (named by the variable, the value is never read into the label)."""
    env = os.environ if env is None else env
    return [Choice(model, f"key in ${name}", model) for name, model in PROVIDER_KEYS if env.get(name)]


def demo_choice() -> Choice:
    return Choice(EMBEDDED, DEMO_LABEL, EMBEDDED)


def all_choices(env: dict | None = None) -> list[Choice]:
    """Everything the setup screen offers, in its order: running servers, provider keys, the demo model."""
    return [*find_servers(), *provider_keys(env), demo_choice()]


def found_lines(choices: list[Choice]) -> str:
    """What was found running or keyed, as `agent run` options, for the no-model message ('' when nothing)."""
    usable = [c for c in choices if not c.demo]
    if not usable:
        ports = ", ".join(f"{kind} {port}" for kind, port in KNOWN_PORTS)
        return f"Nothing answers on the usual ports ({ports}), and no provider key is set."
    lines = ["Found on this machine:"]
    for choice in usable:
        base = f" --api-base {choice.api_base}" if choice.api_base else ""
        lines.append(f"  --model {choice.model}{base}    # {choice.where}")
    return "\n".join(lines)
