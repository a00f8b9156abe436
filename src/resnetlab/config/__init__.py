"""One typed, frozen configuration tree; presets are YAML files in `configs/`.

Read at the boundary only (CLI, runner): models and loops receive plain values. Overrides are
`section.key=value` strings whose values are parsed as YAML and checked against the field's type;
an unknown key is an error that lists the valid ones. The tree is `schema`, loading and overrides
`loader`, number ranges `ranges`, YAML `safe_yaml`, the preset files `presets`.
"""

from resnetlab.config.loader import apply_overrides, flat_diff, from_dict, migrate, unknown_key, valid_keys
from resnetlab.config.presets import (
    configs_dir,
    dump,
    list_presets,
    load_config,
    load_preset,
    preset_names,
    read_preset,
)
from resnetlab.config.ranges import INT_LIMIT, RANGES, TRAIN_COUNTS, Range, check_ranges, require_at_least_one
from resnetlab.config.safe_yaml import YAML_MAX_DEPTH, YAML_MAX_VALUES, YAMLRefused, parse_yaml, read_yaml
from resnetlab.config.schema import (
    COMPILE_MODES,
    CompileMode,
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    default_data_dir,
    model_options,
    to_dict,
    user_cache_dir,
)
from resnetlab.utils.text import cut, shown

__all__ = [
    "COMPILE_MODES",
    "INT_LIMIT",
    "RANGES",
    "TRAIN_COUNTS",
    "YAML_MAX_DEPTH",
    "YAML_MAX_VALUES",
    "CompileMode",
    "Config",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "Range",
    "TrainConfig",
    "YAMLRefused",
    "apply_overrides",
    "check_ranges",
    "configs_dir",
    "cut",
    "default_data_dir",
    "dump",
    "flat_diff",
    "from_dict",
    "list_presets",
    "load_config",
    "load_preset",
    "migrate",
    "model_options",
    "parse_yaml",
    "preset_names",
    "read_preset",
    "read_yaml",
    "require_at_least_one",
    "shown",
    "to_dict",
    "unknown_key",
    "user_cache_dir",
    "valid_keys",
]
