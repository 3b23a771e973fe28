"""Bounded, safe reading of multi-document YAML into plain JSON-like data.

PyYAML's ``SafeLoader`` never runs code, but on its own it will:

* expand aliases into exponentially large trees ("billion laughs") for whoever walks
  the result next (validation, ``json.dumps`` in the store);
* recurse once per nesting level until Python's stack runs out (``RecursionError``);
* silently keep the last of two equal mapping keys;
* raise ``ValueError``, ``KeyError``, ... instead of ``YAMLError`` for scalars it cannot
  construct (``2024-13-45``, ``!!bool maybe``, a 5,000-digit integer);
* build values JSON cannot hold (``datetime``, ``bytes``, ``set``), which the store
  then fails to save.

This module turns each of those into an error with a line and column (a ``YAMLError``)
or a field path, and bounds the work by limits checked *while composing*, before any
Python object is built. The limits below are the defaults of
:func:`tsunagi.api.load_documents`; each can be overridden there by keyword.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

from .checks_common import Path, quote, shorten
from .errors import FieldError
from .pydantic_errors import describe

#: Largest input accepted, in UTF-8 bytes (8 MiB).
MAX_BYTES = 8 * 1024 * 1024
#: Most YAML documents (``---``-separated, empty ones included) in one input.
MAX_DOCUMENTS = 1000
#: Deepest nesting of mappings and lists; Istio resources need about a dozen levels.
MAX_DEPTH = 100
#: Most YAML nodes one document may expand to, every use of an alias counting the
#: full size of the node it refers to.
MAX_DOCUMENT_NODES = 100_000
#: Most YAML nodes the whole input may expand to (aliases counted as above).
MAX_TOTAL_NODES = 1_000_000

# JSON (and so the store, Kubernetes and protobuf) cannot hold integers beyond 64 bits.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
# Longer digit strings cannot be in range; refusing them up front also avoids Python's
# 4,300-digit int() guard, whose message advises calling sys.set_int_max_str_digits().
_MAX_INT_DIGITS = 30
_MIB = 1024 * 1024

_TAG_PREFIX = "tag:yaml.org,2002:"
_MERGE_TAG = _TAG_PREFIX + "merge"
# What PyYAML's Reader refuses; checked up front to report where (see _bad_character).
_NON_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DOCUMENT_START = re.compile(r"^---(?=[ \t\r\n]|$)", re.MULTILINE)
_SURROGATE = re.compile("[\ud800-\udfff]")


class LimitExceeded(yaml.MarkedYAMLError):
    """A configured limit was hit while reading YAML; ``problem`` says which and what to do."""


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG_PREFIX) :] if tag.startswith(_TAG_PREFIX) else tag


def _shown(value: object) -> str:
    return quote(value) if isinstance(value, str) else quote(repr(value))


# --------------------------------------------------------------------------- composing


class _BoundedComposer(Composer):
    """Composer that bounds nesting depth and alias-expanded node counts.

    Counting happens as nodes are composed, so a "billion laughs" document is refused
    after reading its few lines of text, long before anything is expanded.
    """

    def __init__(self, max_depth: int, max_document_nodes: int, max_total_nodes: int) -> None:
        super().__init__()
        self.max_depth = max_depth
        self.max_document_nodes = max_document_nodes
        self.max_total_nodes = max_total_nodes
        self._depth = 0
        self._document_nodes = 0
        self._total_nodes = 0
        # id(anchored node) -> its expanded size; absent while the node is being composed.
        self._anchored_sizes: dict[int, int] = {}

    def compose_document(self) -> Node | None:
        self._depth = 0
        self._document_nodes = 0
        self._anchored_sizes = {}
        return super().compose_document()

    def _count(self, nodes: int, mark: Any) -> None:
        self._document_nodes += nodes
        self._total_nodes += nodes
        if self._document_nodes > self.max_document_nodes:
            raise LimitExceeded(
                problem=f"this document expands to more than {self.max_document_nodes} YAML"
                " nodes (each use of an *alias counts everything its anchor holds); Istio"
                " resources are far smaller: look for anchors nested in anchors, or split"
                " the resource (limit: max_document_nodes)",
                problem_mark=mark,
            )
        if self._total_nodes > self.max_total_nodes:
            raise LimitExceeded(
                problem=f"the input expands to more than {self.max_total_nodes} YAML nodes in"
                " total; split it into several files and apply them one at a time"
                " (limit: max_total_nodes)",
                problem_mark=mark,
            )

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[attr-defined]
        if isinstance(event, AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is reported by Composer
                size = self._anchored_sizes.get(id(target))
                if size is None:
                    raise ComposerError(
                        None,
                        None,
                        f"alias *{event.anchor} is used inside the node it names; recursive"
                        " structures cannot be represented in Istio resources",
                        event.start_mark,  # type: ignore[arg-type]  # libyaml's Mark
                    )
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)
        if self._depth >= self.max_depth and not isinstance(event, ScalarEvent):
            raise LimitExceeded(
                problem=f"mappings and lists are nested more than {self.max_depth} levels deep;"
                " Istio resources never need this: look for unclosed brackets or runaway"
                " indentation (limit: max_depth)",
                problem_mark=event.start_mark,
            )
        before = self._document_nodes
        self._count(1, event.start_mark)
        self._depth += 1
        node = super().compose_node(parent, index)
        self._depth -= 1
        if event.anchor is not None:
            self._anchored_sizes[id(node)] = self._document_nodes - before
        return node


# --------------------------------------------------------------------------- constructing


class _StrictConstructor(SafeConstructor):
    """SafeConstructor that only builds JSON-like values and never raises non-YAML errors."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, LookupError, AttributeError, OverflowError) as exc:
            # e.g. `!!float abc`, `!!bool maybe`, `!!int ''`: PyYAML lets these escape.
            detail = f": {exc}" if isinstance(exc, ValueError | OverflowError) else ""
            what = _shown(node.value) if isinstance(node, ScalarNode) else "a collection"
            raise ConstructorError(
                None,
                None,
                f"cannot read {what} as {_short_tag(node.tag)}{detail}",
                node.start_mark,
            ) from None


# `loader: Any`: PyYAML's stubs only admit its own loader classes here.
def _construct_mapping(loader: Any, node: MappingNode) -> dict[Any, Any]:
    # Explicit keys must be unique; keys brought in by a merge (`<<: *base`) may be
    # overridden, as the merge-key spec says.
    first_seen: dict[Any, Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            earlier = first_seen.get(key)
        except TypeError:  # unhashable key; construct_mapping reports it
            continue
        if earlier is not None:
            raise ConstructorError(
                None,
                None,
                f"duplicate key {_shown(key)} (first at line {earlier.start_mark.line + 1});"
                " YAML mapping keys must be unique: remove or rename one",
                key_node.start_mark,
            )
        first_seen[key] = key_node
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    return mapping


def _construct_int(loader: Any, node: ScalarNode) -> int:
    text: str = loader.construct_scalar(node)  # refuses `!!int [1]` with a clear error
    if sum(c.isdigit() for c in text) > _MAX_INT_DIGITS:
        raise ConstructorError(
            None,
            None,
            f"integer {_shown(text)} is out of range (at most 64 bits)",
            node.start_mark,
        )
    value: int = loader.construct_yaml_int(node)
    return value


def _construct_timestamp_as_text(loader: Any, node: ScalarNode) -> str:
    # Kubernetes keeps timestamps (creationTimestamp: 2024-01-01T00:00:00Z) as strings.
    text: str = loader.construct_scalar(node)
    return text


def _refuse_tag(loader: Any, node: Node) -> None:
    raise ConstructorError(
        None,
        None,
        f"the {_short_tag(node.tag)} tag is not supported: Istio resources hold only strings,"
        " numbers, booleans, null, lists and mappings",
        node.start_mark,
    )


_StrictConstructor.add_constructor(Resolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictConstructor.add_constructor(_TAG_PREFIX + "int", _construct_int)
_StrictConstructor.add_constructor(_TAG_PREFIX + "timestamp", _construct_timestamp_as_text)
for _name in ("binary", "set", "omap", "pairs"):
    _StrictConstructor.add_constructor(_TAG_PREFIX + _name, _refuse_tag)


# --------------------------------------------------------------------------- loaders

if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _CLoader(_BoundedComposer, CParser, _StrictConstructor, Resolver):
        """libyaml scans and parses (fast); Python composes (bounded) and constructs."""

        def __init__(self, text: str, max_depth: int, doc_nodes: int, total_nodes: int) -> None:
            CParser.__init__(self, text)
            _BoundedComposer.__init__(self, max_depth, doc_nodes, total_nodes)
            _StrictConstructor.__init__(self)
            Resolver.__init__(self)


class _PyLoader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    _BoundedComposer,
    _StrictConstructor,
    Resolver,
):
    """Pure-Python parsing, for PyYAML builds without libyaml."""

    def __init__(self, text: str, max_depth: int, doc_nodes: int, total_nodes: int) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _BoundedComposer.__init__(self, max_depth, doc_nodes, total_nodes)
        _StrictConstructor.__init__(self)
        Resolver.__init__(self)


#: The loader class used by :func:`read_documents` (tests swap in ``_PyLoader``).
LOADER: Any = _CLoader if yaml.__with_libyaml__ else _PyLoader


# --------------------------------------------------------------------------- errors


def yaml_error_reason(exc: yaml.YAMLError) -> str:
    """A one-line reason, with line and column when known, for a YAML error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    text = f"{context}: {problem}" if context else str(problem)
    text = " ".join(text.split())  # unmarked errors (ReaderError) span lines
    prefix = "" if isinstance(exc, LimitExceeded) else "invalid YAML: "
    return shorten(f"{prefix}{where}{text}")


def _document_at(text: str, pos: int) -> int:
    """Best-effort number of the document containing ``text[pos]`` (counts ``---`` lines)."""
    starts = [m.start() for m in _DOCUMENT_START.finditer(text, 0, pos)]
    if not starts:
        return 1
    before_first = text[: starts[0]]
    implicit_first = any(
        line.strip() and not line.lstrip().startswith(("#", "%"))
        for line in before_first.splitlines()
    )
    return len(starts) + (1 if implicit_first else 0)


def _bad_character(text: str, filename: str) -> FieldError | None:
    match = _NON_PRINTABLE.search(text)
    if match is None:
        return None
    pos = match.start()
    char = ord(text[pos])
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    what = "a lone surrogate, which is not valid Unicode" if 0xD800 <= char <= 0xDFFF else ""
    what = what or "a control character"
    return FieldError(
        filename,
        _document_at(text, pos),
        "",
        "",
        "",
        f"invalid YAML: line {line}, column {column}: character U+{char:04X} ({what}) is not"
        " allowed in YAML text; remove it, or write it as an escape such as \\x07 inside a"
        " double-quoted string",
    )


def _utf8_size(text: str, limit: int) -> int:
    if len(text) * 4 <= limit:  # UTF-8 needs at most 4 bytes per character
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------- documents


def read_documents(
    text: str,
    filename: str,
    errors: list[FieldError],
    *,
    max_bytes: int = MAX_BYTES,
    max_documents: int = MAX_DOCUMENTS,
    max_depth: int = MAX_DEPTH,
    max_document_nodes: int = MAX_DOCUMENT_NODES,
    max_total_nodes: int = MAX_TOTAL_NODES,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(document number, data)`` for every non-empty document of ``text``.

    Problems are appended to ``errors`` (document 0 means the whole input). Reading stops
    at a syntax error or a limit, since the stream cannot be resynchronised there; a
    value that cannot be constructed only spoils its own document.
    """
    size = _utf8_size(text, max_bytes)
    if size > max_bytes:
        errors.append(
            FieldError(
                filename,
                0,
                "",
                "",
                "",
                f"input is {size / _MIB:.1f} MiB, more than the limit of"
                f" {max_bytes / _MIB:g} MiB; split it into several files and apply them one"
                " at a time (limit: max_bytes)",
            )
        )
        return
    bad = _bad_character(text, filename)
    if bad is not None:
        errors.append(bad)
        return
    index = 0
    try:
        loader = LOADER(text, max_depth, max_document_nodes, max_total_nodes)
    except yaml.YAMLError as exc:  # PyYAML's Reader checks the whole text up front
        errors.append(FieldError(filename, 1, "", "", "", yaml_error_reason(exc)))
        return
    try:
        while True:
            try:
                if not loader.check_node():
                    return
                if index >= max_documents:
                    errors.append(
                        FieldError(
                            filename,
                            index + 1,
                            "",
                            "",
                            "",
                            f"more than {max_documents} YAML documents in one input; split"
                            " it into several files and apply them one at a time"
                            " (limit: max_documents)",
                        )
                    )
                    return
                node = loader.get_node()
            except yaml.YAMLError as exc:
                errors.append(FieldError(filename, index + 1, "", "", "", yaml_error_reason(exc)))
                return
            index += 1
            try:
                data = loader.construct_document(node)
            except yaml.YAMLError as exc:
                errors.append(FieldError(filename, index, "", "", "", yaml_error_reason(exc)))
                loader.constructed_objects = {}
                loader.recursive_objects = {}
                loader.state_generators = []
                continue
            if data is not None:
                yield index, data
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- plain data


def plain_data(value: object, max_depth: int = MAX_DEPTH) -> tuple[Any, list[tuple[Path, str]]]:
    """Copy ``value`` as the JSON the store will hold, and list what JSON cannot hold.

    Integer mapping keys become strings (as in JSON and Kubernetes); lists and tuples
    become lists. Problems (with their paths) are: keys that are not strings or
    integers, integers beyond 64 bits, NaN and infinities, strings with lone
    surrogates, values of other types, and nesting deeper than ``max_depth``.
    """
    problems: list[tuple[Path, str]] = []

    def walk(v: object, path: Path, depth: int) -> Any:
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, int):
            if not _INT_MIN <= v <= _INT_MAX:
                problems.append((path, "integer is out of range (at most 64 bits)"))
            return v
        if isinstance(v, float):
            if not math.isfinite(v):
                problems.append((path, f"{v} is not allowed (JSON has no NaN or infinity)"))
            return v
        if isinstance(v, str):
            if _has_surrogate(v):
                problems.append((path, "string contains a lone surrogate (not valid Unicode)"))
            return v
        if isinstance(v, Mapping | list | tuple) and depth >= max_depth:
            problems.append((path, f"nested more than {max_depth} levels deep"))
            return None
        if isinstance(v, Mapping):
            out: dict[str, Any] = {}
            for k, item in v.items():
                key = _plain_key(k, path, problems)
                if key is None:
                    continue
                if key in out:
                    problems.append(((*path, key), f"duplicate key {quote(key)}"))
                    continue
                out[key] = walk(item, (*path, key), depth + 1)
            return out
        if isinstance(v, list | tuple):
            return [walk(item, (*path, i), depth + 1) for i, item in enumerate(v)]
        problems.append((path, f"a {type(v).__name__} value cannot be stored; use a string"))
        return None

    return walk(value, (), 0), problems


def _plain_key(key: object, path: Path, problems: list[tuple[Path, str]]) -> str | None:
    if isinstance(key, str):
        if _has_surrogate(key):
            problems.append((path, "a key contains a lone surrogate (not valid Unicode)"))
            return None
        return key
    if isinstance(key, int) and not isinstance(key, bool) and _INT_MIN <= key <= _INT_MAX:
        return str(key)
    hint = " (YAML reads unquoted true/false/yes/no/on/off as booleans)"
    problems.append(
        (
            path,
            f"mapping key {describe(key)} must be a string; quote it"
            + (hint if isinstance(key, bool) else ""),
        )
    )
    return None


def _has_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None
