"""One checked reader for the text files a user hands kdsweep (configs, search spaces).

Every such file is read the same way, so every failure is one line naming the file:

* it must exist and be a regular file (a FIFO would block the read forever, a folder or a
  device is a mistake), of at most MAX_TEXT_BYTES (a config is about 2 KB, a search space
  about 3 KB; a 50 MB file used to hang the YAML parser for minutes);
* it must be UTF-8 (a UTF-8 byte-order mark is accepted and dropped); a bad byte is named by
  its byte offset and line;
* YAML is read with the safe loader (no Python tags), every key of a mapping once, and with
  anchors and aliases allowed only while the document they expand to stays under
  MAX_YAML_NODES values: a 1.2 KB alias bomb expands to hundreds of millions of values (it
  became a 139 MB optuna.db, and a MemoryError when an error message quoted it), and an alias
  inside its own anchor expands forever. Documents nested deeper than Python's recursion limit
  and integers too long for Python to convert are refused the same way.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from distill.errors import ConfigError, shown

MAX_TEXT_BYTES = 1 << 20  # 1 MiB
MAX_YAML_NODES = 100_000
UTF8_BOM = b"\xef\xbb\xbf"
MERGE_TAG = "tag:yaml.org,2002:merge"


def read_text(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The text of a user's file: a regular file of at most `max_bytes` bytes, UTF-8 (BOM dropped).
    `what` names it in errors ("config file", "search space file")."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: {what} cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path}: is a folder; the {what} must be a file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: is not a regular file (a pipe, socket or device); the {what} must be a file")
    if st.st_size > max_bytes:
        raise ConfigError(f"{path}: {st.st_size:,} bytes; a {what} may be at most {max_bytes:,} bytes")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as e:
        raise ConfigError(f"{path}: {what} cannot be read ({e.strerror})") from None
    if len(data) > max_bytes:  # grew since stat
        raise ConfigError(f"{path}: more than {max_bytes:,} bytes; a {what} may be at most {max_bytes:,} bytes")
    return decode_utf8(data, str(path))


def decode_utf8(data: bytes, source: str) -> str:
    """`data` as UTF-8 text (a leading BOM dropped), or a ConfigError naming the first bad byte."""
    skip = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = skip + e.start  # in the file, BOM included
        line = data.count(b"\n", 0, offset) + 1
        raise ConfigError(f"{source}: not UTF-8 text: byte 0x{data[offset]:02x} at byte offset {offset} "
                          f"(line {line}); save the file as UTF-8") from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def expanded_size(root: yaml.Node, limit: int) -> int | None:
    """How many values the document holds once every alias is expanded, or None when that is more
    than `limit` or infinite (an alias inside its own anchor). Linear in the composed nodes: a
    node shared through aliases is counted once and its size reused."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            if size[key] > limit:
                return None
        elif key not in size:
            if key in on_path:
                return None  # the node contains itself
            on_path.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node) if id(c) not in size)
    return size[id(root)]


class CheckedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently: a config that says `lr` twice is ambiguous) and documents whose aliases expand
    past MAX_YAML_NODES values (module docstring)."""

    first_alias: yaml.Mark | None = None

    def compose_node(self, parent, index):
        if self.first_alias is None and self.check_event(yaml.AliasEvent):
            self.first_alias = self.peek_event().start_mark
        return super().compose_node(parent, index)

    def construct_document(self, node):
        if self.first_alias is not None and expanded_size(node, MAX_YAML_NODES) is None:
            raise yaml.constructor.ConstructorError(
                None, None, f"its anchors and aliases expand to more than {MAX_YAML_NODES:,} values (or into "
                f"themselves), first alias at line {self.first_alias.line + 1}; write the values out instead")
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *defaults`: keys written here override the merged ones
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key (a list): SafeLoader refuses it with its own message
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {shown(key)} (line {key_node.start_mark.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`, read with CheckedLoader; every failure a ConfigError naming `source`."""
    try:
        return yaml.load(text, Loader=CheckedLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: malformed YAML: {str(e)[:500]}") from None
    except RecursionError:
        raise ConfigError(f"{source}: malformed YAML: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits (Python's conversion limit)
        raise ConfigError(f"{source}: malformed YAML: {str(e)[:200]}") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """A user's YAML file through `read_text` and `load_yaml`."""
    return load_yaml(read_text(path, what), str(path))
