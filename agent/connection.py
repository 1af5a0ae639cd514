"""Reaching the model a run is configured for: the embedded server started for it, or a server already running.

Shared by `agent run` and the terminal app, so both connect, and fail, the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.client import Model
from agent.config import Settings
from decoding.serving.launch import EmbeddedServer

FIX_UNREACHABLE = (
    "fix: start the model server, or point --api-base (or RETAIN_API_BASE, or api_base in agent.toml) at one that "
    "is running; `agent run --help` lists ways to get a model, and /model in the app lists the servers running here"
)


def open_model(
    settings: Settings, progress: Callable[[str], None], within: float | None = None
) -> tuple[Model, EmbeddedServer | None]:
    """The model the settings name, answering, and the embedded server started for it (or None), which must be
    ready `within` seconds (EmbeddedServerTimeout). The caller stops the server; on any failure here it is
    already stopped."""
    name, api_base = settings.model, settings.api_base
    server = None
    if name == "embedded":
        server = EmbeddedServer() if within is None else EmbeddedServer(startup_timeout=max(within, 0.1))
    try:
        if server is not None:
            progress("starting the embedded model server …")
            server.start()
            name, api_base = f"openai/{server.model_id}", server.api_base
            progress(f"embedded server ready at {api_base} ({server.model_id})")
        model = Model(name, api_base, settings.api_key)
        model.check_reachable()
    except BaseException:  # an interrupt too: never leave the server running
        if server is not None:
            server.stop()
        raise
    return model, server
