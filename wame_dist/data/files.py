"""Opening a torchvision data set from its standard files, with an error that says what to put where."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from wame_dist.errors import BadInput

T = TypeVar("T")


class DataNotFound(BadInput, FileNotFoundError):
    """A data set's files are not where the run looks for them (bad input: the message says where to put
    them)."""


def missing_files_error(name: str, folder: Path, missing: Sequence[str], how: str) -> DataNotFound:
    """The error raised when ``name``'s files are absent: which files, which folder, how to get them."""
    return DataNotFound(
        f"{name} data not found: missing {', '.join(missing)} in {folder.resolve()}. "
        f"Put the files there ({how}), or pass --download on a machine with internet access "
        "to have torchvision fetch them."
    )


def open_standard_files(
    name: str, folder: Path, expected: Sequence[str], how: str, *, download: bool, open_: Callable[[], T]
) -> T:
    """Runs ``open_`` (a torchvision constructor) once ``expected`` files are in ``folder`` or downloadable.

    Missing files and ``download=False`` raise :func:`missing_files_error` without touching the network;
    with ``download=True`` a failed download raises the same error, chained to the download's own.
    Files that are present but corrupt keep torchvision's error.
    """
    missing = [f for f in expected if not (folder / f).is_file()]
    if missing and not download:
        raise missing_files_error(name, folder, missing, how)
    try:
        return open_()
    except (OSError, RuntimeError) as err:
        if missing:
            raise missing_files_error(name, folder, missing, how) from err
        raise
