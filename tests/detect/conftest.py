"""Shared by the detection tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, more only contend (and these are tiny)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
