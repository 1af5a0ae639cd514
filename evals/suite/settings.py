"""Load application settings from a TOML file, with defaults."""

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PATH = Path("~/.config/shelf/settings.toml")


@dataclass
class Settings:
    library: Path = Path("~/Books")
    page_size: int = 20
    theme: str = "light"
    plugins: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.page_size <= 0:
            raise ValueError("page_size must be positive")
        if self.theme not in ("light", "dark"):
            raise ValueError(f"unknown theme {self.theme!r}")


def _coerce(name: str, value, default):
    if isinstance(default, Path):
        return Path(value).expanduser()
    if isinstance(default, int) and not isinstance(value, int):
        return int(value)
    return value


def load(path: Path = DEFAULT_PATH) -> Settings:
    """Settings from `path`; missing keys keep their defaults, unknown keys are an error."""
    path = path.expanduser()
    settings = Settings()
    if not path.exists():
        return settings
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    for name, value in data.items():
        if not hasattr(settings, name):
            raise KeyError(f"{path}: unknown setting {name!r}")
        setattr(settings, name, _coerce(name, value, getattr(settings, name)))
    settings.validate()
    return settings


def describe(settings: Settings) -> str:
    lines = [f"library:   {settings.library}", f"page size: {settings.page_size}", f"theme:     {settings.theme}"]
    if settings.plugins:
        lines.append("plugins:   " + ", ".join(settings.plugins))
    return "\n".join(lines)
