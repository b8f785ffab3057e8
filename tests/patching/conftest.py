"""The patching tests compare against references that run thousands of tiny forwards;
with two threads on a busy 2-core machine each waits on the other (~20x slower), so
every module here runs on one thread (restored after it)."""

import pytest

from ..helpers import one_thread


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield
