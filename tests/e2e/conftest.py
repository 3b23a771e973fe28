from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .mesh import Mesh


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path / "state")
    m.state_dir.mkdir(parents=True)
    m.up()
    try:
        yield m
    finally:
        m.close()
