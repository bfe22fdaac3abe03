"""One checked reader for the text files a user hands kdsweep (configs, search spaces).

Every such file is read the same way, so every failure is one line naming the file:

* it must exist and be a regular file (a FIFO would block the read forever, a folder or a
  device is a mistake), of at most MAX_TEXT_BYTES (a config is about 2 KB, a search space
  about 3 KB; a 50 MB file used to hang the YAML parser for minutes, and even libyaml takes
  seconds per MiB of short values);
* it must be UTF-8 (a UTF-8 byte-order mark is accepted and dropped); a bad byte is named by
  its byte offset and line;
* YAML is read with the safe loader (no Python tags; libyaml's parser where PyYAML has it:
  the pure-Python one takes about a minute per MiB of short values), every key of a mapping
  once, and a document may hold at most MAX_YAML_NODES values once its anchors and aliases are
  expanded: a 1.2 KB alias bomb expands to hundreds of millions of values (it became a 139 MB
  optuna.db, and a MemoryError when an error message quoted it), an alias inside its own
  anchor expands forever, and half a million short values took minutes to build.
  Documents nested deeper than Python's recursion limit and integers too long for Python to
  convert are refused the same way.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from kdsweep.distill.errors import ConfigError, shown

MAX_TEXT_BYTES = 256 << 10  # 256 KiB
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


def expanded_size(root: yaml.Node, limit: int) -> tuple[int | None, yaml.Node | None]:
    """(how many values the document holds once every alias is expanded, the first node reached
    twice: an anchor), the size None when it is more than `limit` or infinite (an alias inside its
    own anchor). At most `limit` steps: a node shared through aliases is counted once and its size
    reused."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    shared = None
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    steps = 0
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            if size[key] > limit:
                return None, shared
        elif key in size or key in on_path:
            shared = shared or node
            if key in on_path:
                return None, shared  # the node contains itself
        else:
            steps += 1
            if steps > limit:
                return None, shared
            on_path.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node))
    return size[id(root)], shared


class CheckedLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """PyYAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently: a config that says `lr` twice is ambiguous) and documents of more than MAX_YAML_NODES
    values once anchors and aliases are expanded (module docstring)."""

    def construct_document(self, node):
        size, anchor = expanded_size(node, MAX_YAML_NODES)
        if size is None:
            how = (f" once its anchors and aliases are expanded (or an alias sits inside its own anchor; anchor "
                   f"at line {anchor.start_mark.line + 1})" if anchor is not None else "")
            raise yaml.constructor.ConstructorError(
                None, None, f"holds more than {MAX_YAML_NODES:,} values{how}; write them out, or fewer")
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
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {shown(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`, read with CheckedLoader; every failure a ConfigError naming `source`."""
    try:
        return yaml.load(text, Loader=CheckedLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: malformed YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: malformed YAML: exceeded maximum nesting depth") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits (Python's conversion limit)
        raise ConfigError(f"{source}: malformed YAML: {str(e)[:200]}") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: what (and in which construct), then where."""
    if not isinstance(e, yaml.MarkedYAMLError):
        return " ".join(str(e).split())[:300]
    mark = e.problem_mark or e.context_mark
    what = "; ".join(" ".join(part.split()) for part in (e.context, e.problem) if part)
    return what[:300] + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")


def read_yaml(path: str | Path, what: str) -> Any:
    """A user's YAML file through `read_text` and `load_yaml`."""
    return load_yaml(read_text(path, what), str(path))
