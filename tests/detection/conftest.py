import pytest

from resnetlab.detection.synthetic import write_shapes


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A small generated set in both VOC and COCO layouts; every 4th object difficult / crowd."""
    return write_shapes(tmp_path_factory.mktemp("shapes"), {"train": 12, "test": 4}, size=64, difficult_every=4)
