import pytest
import torch

from resnetlab.detection.config import DetDataConfig
from resnetlab.detection.data import COCOSplit, DetectionSet, TrainOrder, VOCSplit, build_detection_set
from resnetlab.detection.synthetic import SHAPE_CLASSES
from resnetlab.errors import UserError


def test_voc_and_coco_readers_give_the_same_targets(shapes_root):
    voc = VOCSplit(shapes_root, "2007", "train", SHAPE_CLASSES, download=False)
    coco = COCOSplit(shapes_root, "train", download=False)
    assert len(voc) == len(coco) == 12
    assert coco.classes == list(SHAPE_CLASSES)
    ignored = 0
    for i in range(len(voc)):
        (im_v, t_v), (im_c, t_c) = voc[i], coco[i]
        assert im_v.dtype == torch.uint8 and im_v.shape == im_c.shape == (3, 64, 64)
        assert t_v["boxes"].dtype == torch.float32 and t_v["labels"].dtype == torch.int64
        assert torch.equal(t_v["boxes"], t_c["boxes"])
        assert torch.equal(t_v["labels"], t_c["labels"])
        assert torch.equal(t_v["ignore"], t_c["ignore"])
        ignored += int(t_v["ignore"].sum())
        assert (t_v["boxes"][:, 2:] > t_v["boxes"][:, :2]).all() and t_v["boxes"].max() <= 64
    assert ignored > 0


def test_box_covers_the_drawn_shape(shapes_root):
    """A square's box is where its red pixels are (0-based edges: pixels [x1, x2) x [y1, y2))."""
    voc = VOCSplit(shapes_root, "2007", "train", SHAPE_CLASSES, download=False)
    checked = 0
    for i in range(len(voc)):
        image, t = voc[i]
        for box, label in zip(t["boxes"].long().tolist(), t["labels"].tolist()):
            if SHAPE_CLASSES[label - 1] != "square":
                continue
            x1, y1, x2, y2 = box
            inside = image[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].float()
            assert (inside[0] > 180).float().mean() > 0.9 and (inside[1] < 90).float().mean() > 0.9
            checked += 1
    assert checked > 0


def test_training_set_drops_ignored_boxes_and_flips(shapes_root):
    voc = VOCSplit(shapes_root, "2007", "train", SHAPE_CLASSES, download=False)
    train = DetectionSet([voc], list(SHAPE_CLASSES), drop_ignored=True)
    test = DetectionSet([voc], list(SHAPE_CLASSES), drop_ignored=False)
    for i in range(len(voc)):
        _, t = train[i]
        _, full = test[i]
        assert not t["ignore"].any() and len(t["boxes"]) == int((~full["ignore"]).sum())
        image, plain = train[i]
        flipped_image, flipped = train[(i, True)]
        assert torch.equal(flipped_image, image.flip(-1))
        w = image.shape[-1]
        assert torch.equal(flipped["boxes"][:, [0, 2]], w - plain["boxes"][:, [2, 0]])


def test_train_order_is_a_function_of_the_iteration():
    full = TrainOrder(10, 4, seed=3, start_iter=0, hflip=True)
    stream = iter(full)
    first = [next(stream) for _ in range(8)]
    resumed = iter(TrainOrder(10, 4, seed=3, start_iter=5, hflip=True))
    assert [next(resumed) for _ in range(3)] == first[5:8]
    # Each epoch is 2 full batches (the last incomplete one dropped) of one permutation: 8 distinct
    # indices, and a new order in the next epoch.
    flat = [i for batch in first for i, _ in batch]
    assert len(set(flat[:8])) == 8 and len(set(flat[8:16])) == 8 and flat[:8] != flat[8:16]
    assert any(f for b in first for _, f in b) and not all(f for b in first for _, f in b)
    # Two processes split each global batch between them.
    shares = [TrainOrder(10, 4, seed=3, start_iter=0, hflip=True, rank=r, world=2).batch(2) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(first[2])
    assert TrainOrder(10, 4, seed=4, start_iter=0, hflip=True).batch(0) != first[0]


def test_two_seeds_give_different_detection_orders():
    """Seeds are mixed with the epoch by a hash, so no seed replays another's epochs (the former
    `seed * K + epoch` seeding made seed s, epoch e equal to seed s - 1, epoch e + K)."""

    def order(seed: int, epoch: int) -> list[int]:
        stream = iter(TrainOrder(100, 10, seed=seed, start_iter=epoch * 10, hflip=False))
        return [i for _ in range(10) for i, _ in next(stream)]

    orders = [order(seed, epoch) for seed in range(8) for epoch in range(3)]
    assert all(sorted(o) == list(range(100)) for o in orders)
    assert len({tuple(o) for o in orders}) == len(orders)  # 24 distinct permutations


def test_missing_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="VOC 2007 test not found"):
        build_detection_set(DetDataConfig(name="voc", dir=str(tmp_path), download=False), ["2007-test"], train=False)
    with pytest.raises(UserError, match="COCO val2017 not found"):
        build_detection_set(DetDataConfig(name="coco", dir=str(tmp_path), download=False), ["val2017"], train=False)
    with pytest.raises(UserError, match="COCO split .minival. cannot be downloaded"):
        build_detection_set(DetDataConfig(name="coco", dir=str(tmp_path)), ["minival"], train=False)
    with pytest.raises(UserError, match="YEAR-IMAGESET"):
        build_detection_set(DetDataConfig(name="voc", dir=str(tmp_path)), ["test"], train=False)
