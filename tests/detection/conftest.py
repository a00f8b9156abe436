import pytest
import torch

from resnetlab.detection.synthetic import write_shapes


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP threads spinning against other
    processes made these small-tensor tests ~6x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A small generated set in both VOC and COCO layouts; every 4th object difficult / crowd."""
    return write_shapes(tmp_path_factory.mktemp("shapes"), {"train": 12, "test": 4}, size=64, difficult_every=4)
