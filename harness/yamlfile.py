"""Every YAML heurbench reads (trial, sweep, `--data`, `--set` values, a results tree's config.yaml and
sweep.yaml) goes through `read_yaml` / `parse_yaml`: safe loading (no Python tags), no duplicate keys, and
bounds on the file's size, its nesting and its size after alias expansion (a 'billion laughs' document is
refused before anything expands it). Each refusal is one ConfigError line naming the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness import confine
from harness.errors import ConfigError

MAX_BYTES = 1 << 20  # a config or sweep YAML larger than 1 MiB is refused
MAX_DEPTH = 64  # nesting levels
MAX_NODES = 1_000_000  # scalars, lists and mappings once every alias is expanded


class Bound(yaml.YAMLError):
    """A bound of this module exceeded."""


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last silently), nesting
    deeper than MAX_DEPTH and a document of more than MAX_NODES nodes after alias expansion."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise Bound(f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_document(self, node):
        expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if dup:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def expanded_size(root: yaml.Node) -> int:
    """Nodes under `root` counting each alias as a copy of what it names (each shared node counted once per use,
    computed once); Bound past MAX_NODES or for an alias inside the node it names."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            if sizes[key] < 0:
                raise Bound("an alias refers to a node that contains it (a recursive structure)")
            return sizes[key]
        sizes[key] = -1
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        total = 1 + sum(size(c) for c in children)
        if total > MAX_NODES:
            raise Bound(f"more than {MAX_NODES:,} values once its aliases are expanded")
        sizes[key] = total
        return total

    return size(root)


def parse_yaml(text: str, source: str) -> Any:
    """`text` as YAML (None when empty); any failure is one ConfigError line naming `source`."""
    try:
        return yaml.load(text, Loader=BoundedLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        why = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"{source}:{where} not valid YAML ({why})") from None


def read_yaml(path: str | Path, empty_ok: bool = False) -> Any:
    """The YAML file at `path`, bounded; an empty file is an error unless `empty_ok` (then None)."""
    path = confine.readable(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes, larger than the {MAX_BYTES:,} a YAML "
                              f"config may be")
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected YAML)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    raw = parse_yaml(text, str(path))
    if raw is None and not empty_ok:
        raise ConfigError(f"{path}: empty file (expected a mapping of config keys)")
    return raw
