"""Shared pytest set-up: the local SLURM cluster fixture and the WAME implementation matrix."""

from __future__ import annotations

import pytest

pytest_plugins = ["slurm_fixture"]

#: The three WAME implementations, as the constructor flags that select them.
IMPLEMENTATIONS = {
    "single": {"foreach": False, "fused": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def implementation(request) -> dict[str, bool]:
    """Constructor flags of each WAME implementation in turn."""
    return IMPLEMENTATIONS[request.param]
