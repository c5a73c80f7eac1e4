"""Writes that never leave a half-written file: write a temporary file beside the target, then rename.

The file gets the permissions a plain ``open(path, "w")`` would give (the temporary file is private).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _publish(tmp_name: str, path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)
    os.replace(tmp_name, path)


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
        tmp.flush()
        os.fsync(tmp.fileno())
    _publish(tmp.name, path)


def torch_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        torch.save(obj, tmp)
        tmp.flush()
        os.fsync(tmp.fileno())
    _publish(tmp.name, path)
