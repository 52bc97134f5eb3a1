from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.unit.router.router_support import pool_builder


@pytest.fixture
async def make_pool() -> AsyncIterator[Any]:
    async for build in pool_builder():
        yield build
