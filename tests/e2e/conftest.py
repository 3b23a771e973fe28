from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .mesh import Mesh, started_mesh


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    yield from started_mesh(tmp_path)
