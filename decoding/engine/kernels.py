"""The engine's own compiled kernel: int8.cpp, built once per machine with its C++ compiler and loaded into torch.

torch's int8 products cost tens of microseconds a call beyond their bytes, which a decoding step's 72 small layer
products add up to (docs/measurements.md, Weight formats); int8.cpp streams the same weights near the memory's
speed. It is compiled on first use (about 10 s) into the cache (`loading.cache_root()/kernels`), keyed by its source,
torch's version and the compiler, and loaded from there afterwards. Where it cannot be built, `int8_kernel` says why
and weights.py runs fbgemm's int8 product instead.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from decoding.engine.loading import cache_root

SOURCE = Path(__file__).with_name("int8.cpp")


class KernelUnavailable(RuntimeError):
    """The kernel could not be built or loaded here; the message says why."""


def _compiler() -> str:
    name = os.environ.get("CXX", "c++")
    path = shutil.which(name)
    if path is None:
        raise KernelUnavailable(f"no C++ compiler ({name!r} is not on PATH; set CXX to one)")
    return path


def _build(compiler: str, target: Path) -> None:
    from torch.utils.cpp_extension import include_paths, library_paths

    torch_lib = library_paths()[0]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        command = [
            compiler, "-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", "-ffp-contract=off",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *(f"-I{p}" for p in include_paths()), str(SOURCE), "-o", str(built),
            f"-L{torch_lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}",  # torch's own OpenMP runtime
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line] or [result.stderr[-500:]]
            raise KernelUnavailable(f"{Path(compiler).name} could not build {SOURCE.name}: {errors[0]}")
        os.replace(built, target)  # concurrent builders race harmlessly: each rename is whole


def _key(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    digest = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + version.encode())
    return digest.hexdigest()[:16]


def int8_kernel() -> str:
    """Which path of int8.cpp's `torch.ops.retain.int8_linear` runs here, "amx" (AMX-INT8 for several rows, AVX-512
    VNNI for one), "vnni" or "portable", after building (once per machine) and loading it; raises
    `KernelUnavailable` with the reason it cannot run."""
    path, reason = _load()
    if path is None:
        raise KernelUnavailable(reason)
    return path


@functools.cache
def _load() -> tuple[str | None, str]:
    """(path, "") or (None, why): cached, so a failed build is tried once a process."""
    try:
        if os.environ.get("RETAIN_INT8_KERNEL") == "0":
            raise KernelUnavailable("RETAIN_INT8_KERNEL=0")
        compiler = _compiler()
        target = cache_root() / "kernels" / f"int8-{_key(compiler)}.so"
        if not target.is_file():
            _build(compiler, target)
        try:
            torch.ops.load_library(str(target))
        except (OSError, RuntimeError) as error:  # RuntimeError: another build's operators are loaded already
            raise KernelUnavailable(f"{target} would not load: {error}") from error
    except (KernelUnavailable, OSError, subprocess.SubprocessError) as error:
        return None, str(error)
    if torch.ops.retain.has_amx():
        return "amx", ""
    return ("vnni" if torch.ops.retain.has_vnni() else "portable"), ""
