"""The configuration tree: presets load, overrides are typed and validated, errors name the key."""

from __future__ import annotations

import re

import pytest
import yaml

from resnetlab.config import Config, apply_overrides, from_dict, list_presets, load_config, load_preset, valid_keys
from resnetlab.detection.config import list_detection_presets, load_detection_config
from resnetlab.errors import UserError


def test_issue_keys_exist():
    keys = set(valid_keys())
    for key in (
        "model.name",
        "data.name",
        "data.dir",
        "train.max_iters",
        "train.eval_every",
        "train.checkpoint_every",
        "train.seed",
        "optim.lr",
        "optim.milestones",
    ):
        assert key in keys


def test_defaults_are_the_papers_cifar_recipe():
    c = Config()
    assert (c.optim.lr, c.optim.momentum, c.optim.weight_decay) == (0.1, 0.9, 1e-4)
    assert c.optim.milestones == (32000, 48000) and c.train.max_iters == 64000 and c.train.batch_size == 128


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads(name):
    cfg = load_preset(name)
    assert isinstance(cfg, Config)


def test_presets_cover_the_papers_experiments():
    presets = set(list_presets())
    for depth in (20, 32, 44, 56, 110, 1202):
        assert f"cifar10-resnet{depth}" in presets
    for depth in (20, 32, 44, 56, 110):
        assert f"cifar10-plain{depth}" in presets
    for depth in (18, 34, 50, 101, 152):
        assert f"imagenet-resnet{depth}" in presets
    # Sec. 4.2: 110 layers warm up at 0.01 until the training error is below 80 %.
    r110 = load_preset("cifar10-resnet110")
    assert r110.optim.warmup_lr == 0.01 and r110.optim.warmup_until_error == 80.0


@pytest.mark.parametrize("name", list_detection_presets())
def test_every_detection_preset_loads(name):
    load_detection_config(name)


def test_override_values_are_parsed_as_yaml_and_typed():
    cfg = apply_overrides(Config(), ["optim.milestones=[400]", "train.max_iters=6.4e4", "optim.weight_decay=1e-4"])
    assert cfg.optim.milestones == (400,) and cfg.train.max_iters == 64000 and cfg.optim.weight_decay == 1e-4
    assert apply_overrides(cfg, ["optim.warmup_lr=0.01"]).optim.warmup_lr == 0.01
    assert apply_overrides(cfg, ["optim.warmup_lr=null"]).optim.warmup_lr is None


def test_an_override_that_yaml_reads_as_a_boolean_or_a_number_stays_text_where_the_key_takes_text():
    # YAML 1.1: off/yes are booleans, 2024 an integer; a folder may be called any of them
    cfg = apply_overrides(Config(), ["data.dir=2024", "data.name=imagefolder", "train.channels_last=off"])
    assert cfg.data.dir == "2024" and cfg.train.channels_last is False
    assert apply_overrides(Config(), ["data.dir=yes"]).data.dir == "yes"
    with pytest.raises(UserError, match=r"^data.cache: 'off' is not one of 'user', 'data', 'none'$"):
        apply_overrides(Config(), ["data.cache=off"])
    with pytest.raises(UserError, match=r"train.max_iters: expected an integer, got 'yes'"):
        apply_overrides(Config(), ["train.max_iters=yes"])


@pytest.mark.parametrize(
    "override, words",
    [
        ("optim.nope=1", ["unknown config key optim.nope", "resnetlab config keys"]),
        ("optim.lrr=1", ["unknown config key optim.lrr; did you mean optim.lr?"]),
        ("train.lr=1", ["unknown config key train.lr; did you mean optim.lr?"]),
        ("nosection=1", ["section.key=value"]),
        ("train.max_iters=abc", ["train.max_iters", "integer"]),
        ("train.channels_last=1", ["train.channels_last", "true or false"]),
        ("model.shortcut=D", ["model.shortcut", "'A'"]),
        ("optim.milestones=[48000,32000]", ["optim.milestones", "increasing"]),
        ("train.batch_size=0", ["train.batch_size", "in [1, 65536]"]),
        ("optim.lr=-0.1", ["optim.lr", "> 0"]),
    ],
)
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(UserError) as e:
        apply_overrides(Config(), [override])
    for w in words:
        assert w in str(e.value)


def test_detection_tree_shares_the_count_checks():
    with pytest.raises(UserError, match="train.eval_every: must be >= 1"):
        load_detection_config(list_detection_presets()[0], ["train.eval_every=0"])


def test_yaml_file_preset_and_unknown_section(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "cifar_resnet56"}, "train": {"max_iters": 10}}))
    cfg = load_config(str(path))
    assert cfg.model.name == "cifar_resnet56" and cfg.train.max_iters == 10
    path.write_text(yaml.safe_dump({"modle": {"name": "x"}}))
    with pytest.raises(UserError, match="unknown config section 'modle'"):
        load_config(str(path))
    with pytest.raises(UserError, match="no preset 'cifar10-resnet21'"):
        load_preset("cifar10-resnet21")


def test_detection_shares_the_field_names_and_reads_the_old_ones():
    from resnetlab.config import to_dict
    from resnetlab.detection.config import detection_config_from_dict
    from resnetlab.train.lifecycle import config_diff

    cfg = load_detection_config("shapes-cifar-c4")
    assert cfg.model.name == "cifar_resnet" and cfg.data.name == "shapes"  # as classification's model/data.name
    old = to_dict(cfg)  # a run stored before the rename
    old["model"]["backbone"] = old["model"].pop("name")
    old["data"]["dataset"] = old["data"].pop("name")
    assert detection_config_from_dict(old) == cfg
    assert config_diff(old, cfg) is None  # --resume of such a run compares equal
    with pytest.raises(UserError, match=r"^model.backbone is now called model.name .*--set model.name="):
        load_detection_config("shapes-cifar-c4", ["model.backbone=resnet50"])
    old["model"]["name"] = "resnet50"
    with pytest.raises(UserError, match="both set"):
        detection_config_from_dict(old)


def test_one_yaml_reader_names_the_file(tmp_path):
    from resnetlab.config import read_yaml

    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(UserError, match=r"bad.yaml: not valid YAML"):
        read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match=r"list.yaml: expected a mapping"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml(tmp_path / "empty.yaml") == {}



@pytest.mark.parametrize("text, shown", [("optim: []", "[]"), ("train: false", "False"), ("optim: 0", "0")])
def test_a_section_that_is_not_a_mapping_is_refused(text, shown):
    """They were read as empty sections: a preset whose optim the user meant to set trained on defaults."""
    with pytest.raises(UserError, match=rf"^{text.split(':')[0]}: expected a mapping, got {re.escape(shown)}"):
        from_dict(yaml.safe_load(text))
    assert from_dict(yaml.safe_load("optim:\nmodel: {name: cifar_resnet56}")).model.name == "cifar_resnet56"

def test_model_options_pass_through_without_name_checks():
    """Options set away from their default reach `create_model` when the model takes them (read from
    the builder's signature), and are one line when it does not; defaults leave the network's own."""
    import inspect

    from resnetlab.config import model_options
    from resnetlab.models.registry import cifar_resnet, model_option_names

    def opts(preset, *sets):
        return model_options(load_config(preset, list(sets)).model, num_classes=10, in_channels=3)

    assert opts("cifar10-resnet20") == {"num_classes": 10, "in_channels": 3}
    assert opts("imagenet-resnet50", "model.stride_in_1x1=false", "model.zero_init_residual=true") == {
        "num_classes": 10, "in_channels": 3, "shortcut": "B", "stride_in_1x1": False, "zero_init_residual": True
    }  # fmt: skip
    assert opts("cifar10-resnet20", "model.name=cifar_resnet", "model.depth=8")["depth"] == 8
    keyword = {p.name for p in inspect.signature(cifar_resnet).parameters.values() if p.kind is p.KEYWORD_ONLY}
    assert model_option_names("cifar_resnet20") == keyword - {"residual"}
    with pytest.raises(UserError, match=r"^model.stride_in_1x1=false does not apply to cifar_resnet20"):
        opts("cifar10-resnet20", "model.stride_in_1x1=false")
    with pytest.raises(UserError, match=r"model.shortcut=B does not apply to vgg16 \(its options: none\)"):
        opts("cifar10-resnet20", "model.name=vgg16", "model.shortcut=B")


def _number_keys(root: type, kind: type) -> list[str]:
    """Every `section.key` of a tree whose values are numbers of `kind` (alone, optional or in a list)."""
    import dataclasses
    import typing

    keys = []
    for section in dataclasses.fields(root):
        cls = typing.get_type_hints(root)[section.name]
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if typing.get_origin(tp) is tuple and typing.get_args(tp)[0] is kind:
                keys.append(f"{section.name}.{f.name}[]")  # a list: set as [value]
            elif tp is kind or kind in typing.get_args(tp):
                keys.append(f"{section.name}.{f.name}")
    return keys


def _set(key: str, value: str) -> str:
    return f"{key[:-2]}=[{value}]" if key.endswith("[]") else f"{key}={value}"


def _trees():
    from resnetlab.detection.config import DetectionConfig

    return [(Config, Config()), (DetectionConfig, load_detection_config(list_detection_presets()[0]))]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf", "-Infinity"])
def test_no_float_key_takes_nan_or_inf(value):
    """Every float key of both trees (a new one too): NaN compares False with every bound, so it
    passed `lr <= 0` and the like and reached the optimiser."""
    for root, base in _trees():
        keys = _number_keys(root, float)
        assert "optim.lr" in keys and "optim.momentum" in keys
        for key in keys:
            with pytest.raises(UserError, match=rf"^{key.strip('[]')}: must be a finite number, got -?(nan|inf)$"):
                apply_overrides(base, [_set(key, value)])


def test_no_number_key_takes_a_negative_or_huge_value():
    """No count, size, rate or factor of either tree is negative, none of its integers is above
    2**31 - 1 (`data.workers=-5` was a raw ValueError inside the DataLoader)."""
    for root, base in _trees():
        for key in _number_keys(root, int) + _number_keys(root, float):
            with pytest.raises(UserError, match=rf"^{key.strip('[]')}: must be "):
                apply_overrides(base, [_set(key, "-1")])
        for key in _number_keys(root, int):
            if key != "train.seed":
                with pytest.raises(UserError, match=rf"^{key.strip('[]')}: must be (<= 2147483647|in \[)"):
                    apply_overrides(base, [_set(key, "1e20")])


def test_every_size_count_and_depth_has_a_real_upper_bound():
    """Each key with a bound below 2**31 - 1, in each tree that has it: one past the bound is refused in
    one line naming the key and the range, the bound itself loads. `data.pad=2147483647` overflowed,
    `data.image_size=2147483647` asked for a 2**62-pixel tensor, both as "unexpected" errors."""
    from resnetlab.config import INT_LIMIT, RANGES

    bounded = {key: rng for key, rng in RANGES.items() if rng.high is not None and rng.high < INT_LIMIT}
    assert {"data.pad", "data.image_size", "data.crop", "data.workers", "model.depth", "train.batch_size"} <= set(
        bounded
    )
    for root, base in _trees():
        for key in set(bounded) & set(_number_keys(root, int) + _number_keys(root, float)):
            rng = bounded[key.strip("[]")]
            high = int(rng.high) if float(rng.high).is_integer() else rng.high
            if not rng.high_open:
                with pytest.raises(
                    UserError, match=rf"^{key.strip('[]')}: must be in [(\[].*, {high}\](?: \(or null\))?, got "
                ):
                    apply_overrides(base, [_set(key, str(high + 1))])


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.eval_split=" + "v" * 300, "data.eval_split: must be a name of at most 255 bytes, got 'vvvv"),
        (
            "data.eval_split=val/b",
            "data.eval_split: must be one folder name (no '/', not empty, '.' or '..'), got 'val/b'",
        ),
        ("data.eval_split=..", "data.eval_split: must be one folder name"),
        (
            "data.dir=/tmp/" + "d" * 256,
            "data.dir: must be a path of at most 4095 bytes, each name in it at most 255, got '/tmp/ddd",
        ),
        (
            "train.init_from=" + "w/" * 2100,
            "train.init_from: must be a path of at most 4095 bytes, each name in it at most 255",
        ),
        ("data.dir=", "data.dir: must not be empty (leave the key out for its default), got ''"),  # not the cwd
        ("train.init_from= ", "train.init_from: must not be empty"),
    ],
)
def test_file_names_a_file_system_cannot_hold_are_refused_at_load(override, message):
    with pytest.raises(UserError) as e:
        apply_overrides(Config(), [override])
    assert str(e.value).startswith(message)
    name = "d" * 255  # the longest a file system holds: loads
    assert apply_overrides(Config(), [f"data.dir=/tmp/{name}", f"data.eval_split={name}"]).data.eval_split == name


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
        ("optim.momentum=1", "optim.momentum: must be in [0, 1), got 1.0"),
        ("optim.weight_decay=-1e-4", "optim.weight_decay: must be >= 0, got -0.0001"),
        ("optim.gamma=0", "optim.gamma: must be in (0, 1], got 0.0"),
        ("optim.gamma=1.5", "optim.gamma: must be in (0, 1], got 1.5"),
        ("optim.warmup_lr=0", "optim.warmup_lr: must be > 0 (or null), got 0.0"),
        ("optim.warmup_until_error=101", "optim.warmup_until_error: must be in [0, 100], got 101.0"),
        ("optim.plateau_threshold=-0.1", "optim.plateau_threshold: must be >= 0, got -0.1"),
        ("optim.milestones=[400,400]", "optim.milestones: must be strictly increasing, got [400, 400]"),
        ("optim.milestones=[0,400]", "optim.milestones: must be >= 1, got 0"),
        ("data.workers=-5", "data.workers: must be in [0, 256] (or null), got -5"),
        ("data.mean_samples=-1", "data.mean_samples: must be >= 1, got -1"),
        ("train.seed=4294967296", "train.seed: must be in [0, 4294967295], got 4294967296"),
        ("train.max_iters=1e20", "train.max_iters: must be <= 2147483647, got 100000000000000000000"),
    ],
)
def test_natural_ranges(override, message):
    with pytest.raises(UserError) as e:
        apply_overrides(Config(), [override])
    assert str(e.value) == message


def test_range_ends_that_are_allowed():
    cfg = apply_overrides(
        Config(), ["optim.momentum=0", "optim.gamma=1", "train.seed=4294967295", "data.workers=0", "optim.lr=1e-9"]
    )
    assert (cfg.optim.momentum, cfg.optim.gamma, cfg.train.seed, cfg.data.workers) == (0, 1, 2**32 - 1, 0)


def test_a_key_or_section_given_twice_is_refused_with_its_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("optim:\n  lr: 0.1\ntrain:\n  max_iters: 5\noptim:\n  momentum: 0.5\n")
    with pytest.raises(UserError, match=r"twice.yaml: optim is given twice \(lines 1 and 5\)"):
        load_config(str(path))
    path.write_text("optim:\n  lr: 0.1\n  gamma: 0.5\n  lr: 0.2\n")
    with pytest.raises(UserError, match=r"twice.yaml: optim.lr is given twice \(lines 2 and 4\)"):
        load_config(str(path))
    # apply_overrides lets a later override win (commands add theirs after the user's);
    # the user's own --set refuses a repeated key (tests/cli/test_bad_inputs.py)
    assert apply_overrides(Config(), ["optim.lr=0.1", "optim.lr=0.2"]).optim.lr == 0.2
    # an alias and a merge key that overrides what it merges stay legal YAML
    path.write_text("optim:\n  milestones: &m [10, 20]\ntrain:\n  freeze: [stem]\n")
    assert load_config(str(path)).optim.milestones == (10, 20)


def test_aliases_cannot_expand_a_small_text_into_a_huge_value(tmp_path):
    """Nine nested aliases of nine items: 300 bytes, 9**9 = 387 million strings once expanded. Refused
    before anything is built, in well under a second, and no message repeats the value."""
    import time

    levels = "abcdefghi"
    parts = ["&a [x, x, x, x, x, x, x, x, x]"]
    parts += [f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip(levels, levels[1:])]
    bomb = f"[{', '.join(parts)}]"
    assert len(bomb) < 400
    start = time.perf_counter()
    with pytest.raises(UserError) as e:
        apply_overrides(Config(), [f"train.freeze={bomb}"])
    assert time.perf_counter() - start < 1.0
    assert str(e.value).startswith("--set train.freeze: its aliases expand to more than") and len(str(e.value)) < 120
    (tmp_path / "bomb.yaml").write_text(f"train:\n  freeze: {bomb}\n")
    with pytest.raises(UserError, match=r"bomb.yaml: train.freeze: its aliases expand"):
        load_config(str(tmp_path / "bomb.yaml"))
    with pytest.raises(UserError, match="alias refers to the value that contains it"):
        apply_overrides(Config(), ["train.freeze=&a [x, *a]"])
    with pytest.raises(UserError, match="nested deeper than"):
        apply_overrides(Config(), ["train.freeze=" + "[" * 500 + "]" * 500])


def test_a_long_value_is_cut_in_the_message():
    """A value below the alias limit is still too long to repeat: messages show ~80 characters."""
    for override in [
        "optim.lr=[" + ", ".join(["1"] * 5000) + "]",
        "model.shortcut=" + "D" * 10_000,
        "optim.milestones=[" + "9" * 5000 + "]",
        "x" * 5000 + ".y=1",
        "optim." + "x" * 5000 + "=1",
    ]:
        with pytest.raises(UserError) as e:
            apply_overrides(Config(), [override])
        assert len(str(e.value)) < 200 and "..." in str(e.value), str(e.value)[:300]


def test_where_the_cache_lives_is_a_place_not_a_recipe():
    """A run cached beside its data and resumed (or reused by `reproduce`) with the cache elsewhere,
    or none, trains on the same pixels: data.cache is no part of the recipe; data.pad is."""
    from resnetlab.config import to_dict
    from resnetlab.train.lifecycle import PLACE_KEYS, config_diff

    stored = to_dict(load_config("cifar10-resnet20", ["data.cache=data"]))
    for now in ("user", "none"):
        assert config_diff(stored, load_config("cifar10-resnet20", [f"data.cache={now}"]), allowed=PLACE_KEYS) is None
    assert "data.pad" in config_diff(stored, load_config("cifar10-resnet20", ["data.pad=2"]), allowed=PLACE_KEYS)
