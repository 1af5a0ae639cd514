"""`agent export-embedded OUT_DIR`: the embedded Gemma 3 270M as a plain Hugging Face directory.

vLLM cannot load the GGUF that ships the embedded model; this writes the dequantized float32 weights,
config and tokenizer where any Hugging Face-format loader (vLLM included) can read them. The base model ships
no chat template, so the tokenizer gets one that renders chats as the embedded server does
(`decoding.serving.chat`), so both engines see the same prompt for the same messages.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from decoding.engine.loading import embedded_model_dir
from decoding.serving.chat import CHAT_TEMPLATE

ARCHITECTURE = "Gemma3ForCausalLM"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def export_embedded(out_dir: Path, *, force: bool = False) -> Path:
    """Copy the cached embedded model to `out_dir`; refuses a non-empty directory unless `force`."""
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} exists and is not empty (use --force to overwrite)")
    source = embedded_model_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        shutil.copy2(item, out_dir / item.name)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if not config.get("architectures"):
        config["architectures"] = [ARCHITECTURE]  # vLLM picks the model class by this key
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    _add_chat_template(out_dir)
    return out_dir


def export_tokenizer(out_dir: Path) -> Path:
    """The embedded model's tokenizer files, with the chat template, in `out_dir` (Gemma 3 and 4 share the
    vocabulary)."""
    source = embedded_model_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(source / name, out_dir / name)
    _add_chat_template(out_dir)
    return out_dir


def _add_chat_template(out_dir: Path) -> None:
    tokenizer_path = out_dir / "tokenizer_config.json"
    tokenizer = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    tokenizer.setdefault("chat_template", CHAT_TEMPLATE)
    tokenizer_path.write_text(json.dumps(tokenizer, indent=2), encoding="utf-8")


def main(argv: list[str] | None = None, prog: str = "python -m decoding.vllm.export") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--force", action="store_true", help="overwrite files in a non-empty directory")
    args = parser.parse_args(argv)
    try:
        out = export_embedded(args.out_dir, force=args.force)
    except (FileExistsError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
