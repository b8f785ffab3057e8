"""The patching tests compare against references that run thousands of tiny forwards;
with two threads on a busy 2-core machine each waits on the other (~20x slower), so
every module here runs on one thread (restored after it)."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
