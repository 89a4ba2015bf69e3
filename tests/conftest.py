import os

import pytest
import torch

# Two pytest-xdist workers share the 2-core machine: one thread each keeps them from fighting.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(scope="session")
def tinyshakespeare_path():
    """The classic corpus from ../shared/data (tests that need it skip where it is absent)."""
    path = os.path.abspath(os.path.join(SHARED, "data", "tinyshakespeare.txt"))
    if not os.path.exists(path):
        pytest.skip("../shared/data/tinyshakespeare.txt is not available")
    return path
