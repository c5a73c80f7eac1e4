"""Builds (at first use) and loads the fused C++/OpenMP WAME kernel for CPU tensors.

Built the way DeepSpeed builds its CPU ops: with the local C++ compiler and ninja, through
``torch.utils.cpp_extension.load``, cached under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``). The cache name carries a hash of the source, the flags, the CPU model and
the torch installation (its version and header folders), so nodes of a heterogeneous cluster sharing one
home directory never load a build for another CPU (``-march=native``), and venvs never share a build.
The compiler reads a copy of the source inside that build folder, not the checkout's file: torch records
the source's absolute path in its build file, and two checkouts of the same source would otherwise
rebuild each other's kernel at every switch. Concurrent ranks wait on torch's build lock instead of
compiling twice; rank 0 says when a build starts.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
from pathlib import Path
from types import ModuleType

from wame_dist import atomic
from wame_dist.optim import _torch_compat

_SOURCE = Path(__file__).with_name("csrc") / "wame_cpu.cpp"

#: -mprefer-vector-width=512 uses AVX-512 where the CPU has it (the compact state's hashing is compute-bound);
#: -fno-math-errno lets gcc vectorise sqrt; -ffp-contract=off keeps the roundings of the torch ops mirrored.
_CFLAGS = [
    "-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-ffp-contract=off", "-fopenmp"
]  # fmt: skip


class KernelUnavailable(RuntimeError):
    """The fused CPU kernel cannot be built or loaded on this machine."""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_name() -> str:
    """The extension's cache name: changes whenever the source, the flags, the CPU or the torch install
    change (and only then: the checkout's location plays no part)."""
    import torch
    from torch.utils import cpp_extension

    digest = hashlib.sha256()
    torch_install = [torch.__version__, *cpp_extension.include_paths()]
    for part in (_SOURCE.read_bytes(), " ".join(_CFLAGS).encode(), _cpu_model().encode()):
        digest.update(part)
    digest.update("\n".join(torch_install).encode())
    return f"wame_cpu_{digest.hexdigest()[:12]}"


def _source_in(build_directory: Path) -> Path:
    """The kernel's source, copied (atomically, once) into the build folder its content names; it is never
    rewritten, so ninja finds the build up to date whichever checkout asks for it."""
    copy = build_directory / "source" / _SOURCE.name
    if not copy.exists():
        atomic.write_text(copy, _SOURCE.read_text())
    return copy


def _announce_build() -> None:
    """One line on rank 0 (or a process outside torch.distributed): the first use pauses for the build."""
    import torch.distributed as dist

    rank = (
        dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))
    )
    if rank == 0:
        print("building WAME's fused CPU kernel (first use, ~30 s)", file=sys.stderr, flush=True)


def load() -> ModuleType:
    """Returns the compiled kernel module, building it at first use; raises :class:`KernelUnavailable`."""
    module, error = _build_once()
    if error is not None:
        raise error
    return module


@functools.cache
def _build_once() -> tuple[ModuleType | None, KernelUnavailable | None]:
    """Builds once per process; a failure is remembered so that no later step retries the compiler."""
    try:
        from torch.utils import cpp_extension

        name = build_name()
        build_directory = Path(_torch_compat.extension_build_directory(name))
        source = _source_in(build_directory)
        if not (build_directory / f"{name}.so").exists():
            _announce_build()
        module = cpp_extension.load(
            name=name,
            sources=[str(source)],
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_directory),
        )
        return module, None
    except Exception as error:  # a missing compiler or ninja surfaces as many different exception types
        reason = KernelUnavailable(
            f"the fused CPU kernel of WAME could not be built ({type(error).__name__}: {error}). "
            "It needs a C++ compiler (g++, or $CXX) and ninja at first use."
        )
        reason.__cause__ = error
        return None, reason
