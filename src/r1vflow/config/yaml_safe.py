"""The one YAML reader of experiment files: plain data only, in bounded time and memory.

PyYAML's `safe_load` builds whatever a file describes: aliases expand into shared nodes that a
JSON copy then multiplies (a 342-byte "billion laughs" file took more than 3 GB), recursive
anchors, dates, sets and binary values the schema never names, thousands of nesting levels that
end in a RecursionError. `load_yaml_file` refuses each of these with one `YamlRefused` naming the
file and line, before anything large is built (rules in docs/reliability.md):

- a regular file of at most MAX_FILE_BYTES, UTF-8 text;
- at most MAX_ALIASES aliases, together expanding to at most MAX_NODES nodes; no alias to a node
  that contains it;
- at most MAX_DEPTH levels of nesting;
- only null, booleans, integers, floats, strings, lists and mappings (no dates, sets, binary,
  ordered maps or application tags);
- no key twice in one mapping.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1_000_000
MAX_ALIASES = 32
MAX_NODES = 20_000
MAX_DEPTH = 40
PLAIN_TAGS = frozenset("tag:yaml.org,2002:" + t for t in
                       ("null", "bool", "int", "float", "str", "seq", "map", "merge"))


class YamlRefused(ValueError):
    """A YAML text or file is refused; the message is one line."""


def _where(node_or_event) -> str:
    mark = getattr(node_or_event, "start_mark", None)
    return f"line {mark.line + 1}" if mark else "?"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nodes, aliases and depth while composing."""

    def __init__(self, text: str):
        super().__init__(text)
        self._nodes = 0
        self._aliases = 0
        self._depth = 0
        self._open: set[str] = set()  # anchors of the nodes being composed

    def _count(self, n: int, where) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise YamlRefused(f"{_where(where)}: more than {MAX_NODES} values once aliases are "
                              "expanded (an alias bomb?)")

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlRefused(f"{_where(event)}: more than {MAX_ALIASES} aliases (*name)")
            if event.anchor in self._open:
                raise YamlRefused(f"{_where(event)}: alias *{event.anchor} refers to a value "
                                  "that contains it (a recursive anchor)")
            node = super().compose_node(parent, index)
            self._count(_size(node, {}), event)
            return node
        event = self.peek_event()
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlRefused(f"{_where(event)}: nested more than {MAX_DEPTH} levels deep")
        anchor = getattr(event, "anchor", None)
        if anchor:
            self._open.add(anchor)
        try:
            self._count(1, event)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
                if key in seen and key_node.tag != "tag:yaml.org,2002:merge":
                    raise YamlRefused(f"{_where(key_node)}: key {key!r} appears twice in one "
                                      "mapping")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node, deep=False):
        if node.tag not in PLAIN_TAGS:
            kind = node.tag.removeprefix("tag:yaml.org,2002:")
            raise YamlRefused(f"{_where(node)}: a value of YAML type {kind!r} ({node.value!r:.40})"
                              " is not a config value: quote it to make it text")
        return super().construct_object(node, deep=deep)


def _size(node, memo: dict[int, int]) -> int:
    """Nodes under `node` counted as a JSON copy would expand them (memoised per node)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a cycle counts once (cycles are refused before this)
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_size(k, memo) + _size(v, memo) for k, v in node.value)
    else:
        total = 1
    memo[id(node)] = total
    if total > MAX_NODES:
        raise YamlRefused(f"{_where(node)}: more than {MAX_NODES} values once aliases are "
                          "expanded (an alias bomb?)")
    return total


def load_yaml_text(text: str) -> Any:
    """The plain data of one YAML document, or YamlRefused (one line, with the line number)."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # refuses control characters already
        return loader.get_single_data()
    except YamlRefused:
        raise
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise YamlRefused(f"is not valid YAML: {where}{err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise YamlRefused(f"is not valid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text_file(path: Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes`, or YamlRefused saying why not
    (missing, a directory, a device or pipe, too large, not UTF-8). Never opens a non-file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise YamlRefused("not found (no such file)") from None
    except OSError as err:
        raise YamlRefused(f"cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise YamlRefused("is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise YamlRefused("is not a regular file (a device, pipe or socket)")
    if info.st_size > max_bytes:
        raise YamlRefused(f"is {info.st_size} bytes; an experiment file is at most {max_bytes}")
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as err:
        raise YamlRefused(f"cannot be read ({err.strerror})") from None
    if len(raw) > max_bytes:
        raise YamlRefused(f"is more than {max_bytes} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise YamlRefused(f"is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                          f"{err.start})") from None


def load_yaml_file(path: Path) -> Any:
    """`load_yaml_text` of `read_text_file(path)`."""
    return load_yaml_text(read_text_file(path))
