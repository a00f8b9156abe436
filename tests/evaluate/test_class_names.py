"""`class_names`: ILSVRC-2012 synsets get torchvision's readable names, and no other set of synsets does."""

from __future__ import annotations

from types import SimpleNamespace

from torchvision.models import ResNet50_Weights

from resnetlab.evaluate.predict import class_names

READABLE = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]  # in ILSVRC-2012's sorted synset order


def model(names: list[str], num_classes: int = 1000) -> SimpleNamespace:
    return SimpleNamespace(classes=names, num_classes=num_classes)


def ilsvrc_like() -> list[str]:
    """1000 sorted synset ids from ILSVRC-2012's first (tench) to its last (toilet tissue)."""
    middle = [f"n{2_000_000 + i:08d}" for i in range(998)]
    return ["n01440764", *middle, "n15075141"]


def test_ilsvrc_synsets_get_their_readable_names():
    names = class_names(model(ilsvrc_like()))
    assert names[0] == "n01440764 tench" and names[-1] == "n15075141 toilet tissue"
    assert names[1] == f"n02000000 {READABLE[1]}"


def test_another_set_of_1000_synsets_keeps_its_ids():
    other = [f"n{9_000_000 + i:08d}" for i in range(1000)]  # a part of ImageNet-21k, say
    assert class_names(model(other)) == other
    shuffled = ilsvrc_like()
    shuffled[1], shuffled[2] = shuffled[2], shuffled[1]  # not in ImageFolder's order: positions mean nothing
    assert class_names(model(shuffled)) == shuffled


def test_without_names_1000_classes_are_imagenets_and_others_are_indices():
    assert class_names(model([])) == READABLE
    assert class_names(model([], 3)) == ["0", "1", "2"]
    assert class_names(model(["cat", "dog"], 2)) == ["cat", "dog"]


def test_an_ensemble_of_our_imagenet_run_and_imported_weights_is_one_set_of_classes(tmp_path, tiny_checkpoint):
    """Our ImageNet runs name ILSVRC's classes by synset, imported torchvision weights by readable name:
    the same classes in the same order (table 5 ensembles mixed them), but not another 1000."""
    import pytest

    from resnetlab.errors import UserError
    from resnetlab.evaluate.checkpoints import load_models

    tiny_checkpoint(tmp_path / "ours.pt", ilsvrc_like(), {})
    tiny_checkpoint(tmp_path / "imported.pt", list(READABLE), {})
    tiny_checkpoint(tmp_path / "other.pt", [f"n{9_000_000 + i:08d}" for i in range(1000)], {})
    assert len(load_models([str(tmp_path / "ours.pt"), str(tmp_path / "imported.pt")], "cpu")) == 2
    with pytest.raises(UserError, match="have different classes"):
        load_models([str(tmp_path / "ours.pt"), str(tmp_path / "other.pt")], "cpu")
