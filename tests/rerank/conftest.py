"""Fixtures of the rerank tests: the Cranfield collection (skipped when ../shared/data is absent)."""

from __future__ import annotations

import pytest

from rankrl.rerank.collections import Collection, load_collection
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def cranfield() -> Collection:
    return load_collection(shared_data("cranfield"))
