"""The one YAML reader of configs (presets, run configs, `--set` values): `yaml.safe_load` that also
refuses a key given twice, alias bombs and deep nesting, before anything is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from resnetlab.errors import UserError, one_line
from resnetlab.utils.text import cut

YAML_MAX_VALUES = 100_000  # a config holds about 60 values; a list key a few hundred at most
YAML_MAX_DEPTH = 20  # a config is 3 levels deep


class YAMLRefused(Exception):
    """Valid YAML that no config needs and that would be read wrong or at great cost."""


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load(text)` for configs (presets, run configs, --set values), which refuses
    (YAMLRefused, naming the key and its line):
    - a key given twice in one mapping: PyYAML keeps the last silently, so a second `optim:`
      section would replace the first whole;
    - aliases that expand to more than YAML_MAX_VALUES values: the parsed objects share what an
      alias names, but checking, printing or saving the config copies it out, and nine nested
      aliases in 400 bytes are a billion values (gigabytes, minutes);
    - nesting deeper than YAML_MAX_DEPTH, or an alias inside what it names.
    The node graph is checked before anything is built, in time linear in the text."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_values(node, "", 0, {}, set())
        return loader.construct_document(node)
    except RecursionError:  # PyYAML's composer recurses once per level
        raise YAMLRefused(f"nested deeper than {YAML_MAX_DEPTH} levels") from None
    except ValueError as e:  # a scalar PyYAML resolves but cannot build: a 5000-digit int, a 13th month
        raise yaml.constructor.ConstructorError(problem=cut(str(e), 60)) from None
    except (KeyError, IndexError, AttributeError, TypeError) as e:  # a bad value under a tag: `!!bool maybe`
        problem = f"a tagged value it cannot build ({type(e).__name__})"
        raise yaml.constructor.ConstructorError(problem=problem) from None
    finally:
        loader.dispose()


_MERGE = "tag:yaml.org,2002:merge"


def _at(path: str) -> str:
    return f"{path}: " if path else ""


def _count_values(node: yaml.Node, path: str, depth: int, counted: dict[int, int], open_: set[int]) -> int:
    """The number of values under `node` with every alias expanded (each node counted once, then
    reused), refusing duplicate keys on the way. `path` is the dotted key of `node` ("optim.lr")."""
    if id(node) in counted:
        return counted[id(node)]
    line = node.start_mark.line + 1
    if id(node) in open_:
        raise YAMLRefused(f"{_at(path)}an alias refers to the value that contains it (line {line})")
    if depth > YAML_MAX_DEPTH:
        raise YAMLRefused(f"{_at(path)}nested deeper than {YAML_MAX_DEPTH} levels (line {line})")
    open_.add(id(node))
    total = 1
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            name = cut(str(key.value), 40) if isinstance(key, yaml.ScalarNode) else "?"
            dotted = f"{path}.{name}" if path else name
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE:
                here = key.start_mark.line + 1
                if name in lines:
                    raise YAMLRefused(
                        f"{dotted} is given twice (lines {lines[name]} and {here}); the second would replace the first"
                    )
                lines[name] = here
            total += _count_values(key, dotted, depth + 1, counted, open_)
            total += _count_values(value, dotted, depth + 1, counted, open_)
    elif isinstance(node, yaml.SequenceNode):
        total += sum(_count_values(item, path, depth + 1, counted, open_) for item in node.value)
    open_.discard(id(node))
    if total > YAML_MAX_VALUES:
        raise YAMLRefused(f"{_at(path)}its aliases expand to more than {YAML_MAX_VALUES} values (line {line})")
    counted[id(node)] = total
    return total


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The one YAML reader: a mapping from `path`, or a UserError naming the file."""
    path = Path(path)
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file (byte {e.start}); a preset is YAML text") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML ({e.__class__.__name__}{where}: {cut(str(problem), 60)})") from None
    except YAMLRefused as e:
        raise UserError(f"{path}: {one_line(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data
