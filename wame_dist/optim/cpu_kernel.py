"""Builds (at first use) and loads the fused C++/OpenMP WAME kernel for CPU tensors.

Built the way DeepSpeed builds its CPU ops: with the local C++ compiler and ninja, through
``torch.utils.cpp_extension.load``, cached under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``). The cache name carries a hash of the source, the flags and the CPU model,
so nodes of a heterogeneous cluster sharing one home directory never load a build for another CPU
(``-march=native``). Concurrent ranks wait on torch's build lock instead of compiling twice.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from pathlib import Path
from types import ModuleType

_SOURCE = Path(__file__).with_name("csrc") / "wame_cpu.cpp"

#: -fno-math-errno lets gcc vectorise sqrt; -ffp-contract=off keeps the roundings of the torch ops mirrored.
_CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp"]


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
    """The extension's cache name: changes whenever the source, the flags or the CPU change."""
    digest = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), " ".join(_CFLAGS).encode(), _cpu_model().encode()):
        digest.update(part)
    return f"wame_cpu_{digest.hexdigest()[:12]}"


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

        module = cpp_extension.load(
            name=build_name(), sources=[str(_SOURCE)], extra_cflags=_CFLAGS, extra_ldflags=["-fopenmp"]
        )
        return module, None
    except Exception as error:  # a missing compiler or ninja surfaces as many different exception types
        reason = KernelUnavailable(
            f"the fused CPU kernel of WAME could not be built ({type(error).__name__}: {error}). "
            "It needs a C++ compiler (g++, or $CXX) and ninja at first use."
        )
        reason.__cause__ = error
        return None, reason
