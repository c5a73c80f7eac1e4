"""Writing a new output directory atomically: its files go to a temporary directory beside it, which is
renamed into place only once complete, so an interrupted run never leaves a partial output under the
requested name. (Single files: :func:`wame_dist.atomic.torch_save`.)"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wame_dist.deepspeed.checkpoint.layout import CheckpointError


@contextmanager
def new_directory(path: str | Path) -> Iterator[Path]:
    """Yields an empty temporary directory beside ``path`` (named ``.NAME.incomplete-*``); when the block
    ends without an error its files are flushed to disk and it is renamed to ``path``, otherwise removed."""
    path = fresh_path(path)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.incomplete-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o777 & ~umask)  # mkdtemp's private 0700 would outlive the rename
    try:
        yield temporary
        for file in sorted(temporary.rglob("*")):
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def fresh_path(path: str | Path) -> Path:
    """``path`` made absolute, its parent created; it must not exist yet (outputs never overwrite)."""
    path = Path(path).absolute()
    if path.exists():
        raise CheckpointError(f"{str(path)!r} already exists; choose a new output path or remove it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
