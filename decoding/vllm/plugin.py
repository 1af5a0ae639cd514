"""Retain's vLLM plugin: the `vllm.general_plugins` entry point (`retain`), loaded by vLLM in every process.

It does nothing unless `agent serve --engine vllm` switched a part on in vLLM's environment:
- `RETAIN_VLLM_HYBRID=N_MIN,N_MAX`: prompt lookup in front of the model drafter (`decoding.vllm.hybrid`);
- `RETAIN_VLLM_PREDICTION=1`: the file a request sends in `vllm_xargs` (`prediction`): its edit blocks grounded
  in it (`decoding.vllm.grounding`) and cursor drafts from it (`decoding.vllm.cursor`).
Either part wraps vLLM 0.32's internals on its V1 model runner, so the plugin checks the version, and stops a
server whose workers built another runner (`decoding.vllm.runner`).
"""

from __future__ import annotations

import logging
import os

from decoding.vllm import cursor, grounding, hybrid
from decoding.vllm.runner import require_v1_runner

SUPPORTED_VLLM = (0, 32)  # major, minor: the internals wrapped here are those of 0.32.x
PREDICTION_ENV = "RETAIN_VLLM_PREDICTION"

log = logging.getLogger("vllm.retain")  # under vLLM's logger, so it reaches the server log


def check_version(version: str) -> None:
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    if major_minor != SUPPORTED_VLLM:
        raise RuntimeError(
            f"Retain's vLLM plugin supports vLLM {SUPPORTED_VLLM[0]}.{SUPPORTED_VLLM[1]}.x only (it wraps the "
            f"engine's internals); this is vLLM {version}. Install vllm=={SUPPORTED_VLLM[0]}."
            f"{SUPPORTED_VLLM[1]}.* or serve without Retain's decoding (--speculation mtp, --prediction off)"
        )


def features(env: dict[str, str] | os._Environ) -> list[str]:
    """The parts of Retain's decoding switched on in `env`, by name."""
    return [name for name, on in (("hybrid drafting", env.get(hybrid.ENV)), ("prediction", env.get(PREDICTION_ENV)))
            if on]


def register() -> None:
    """Install the parts switched on, in this vLLM process."""
    named = features(os.environ)
    if not named:
        return
    lookup = hybrid.parse_setting(os.environ[hybrid.ENV]) if os.environ.get(hybrid.ENV) else None
    import vllm

    check_version(vllm.__version__)
    require_v1_runner(", ".join(named))
    log.info("Retain's vLLM plugin: %s", ", ".join(named))
    if lookup is not None:
        hybrid.install(*lookup)
    if os.environ.get(PREDICTION_ENV):
        grounding.install_validation()
        grounding.install()
        cursor.install()  # after hybrid: a request's cursor draft takes the place of the lookup's
