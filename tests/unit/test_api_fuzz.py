"""Bad input, tried by machines: property-based tests of YAML loading and validation.

Valid Istio documents (``examples.py``, which the ``test_api_*`` files check) are
mutated: wrong types at every path, huge and non-finite numbers, odd unicode in keys and
values, duplicate keys, anchors, aliases and cycles, tags, deep nesting, non-mapping and
empty documents, and raw text edits. Each result goes through ``load_documents``.

Properties checked for every example (see :func:`check_load`):

* nothing but ``ValidationFailed`` escapes, and each of its errors names the file, the
  document and a field path or a reason, on one line;
* whatever loads is plain JSON, and reloads to the same resources both from JSON (as the
  store keeps it) and from YAML;
* no tag ever runs Python code.

"Never hangs" is checked by bounding sizes, not by timing: examples here are a few KiB
(deadline off, so a busy machine cannot make them flaky), and the limit tests in
``test_api_limits.py`` show that what is bigger is refused before it is expanded.
"""

from __future__ import annotations

import copy
import json
import textwrap
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsunagi.api import FieldError, Resource, ValidationFailed, load_documents, parse_document

from . import examples

FILENAME = "fuzz.yaml"
# libyaml's emitter is several times faster than PyYAML's, which matters at this volume.
DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

# Random examples every run (new inputs get tried over time); failures print a blob to
# reproduce them. No example database: nothing is written into the source tree.
FUZZ = settings(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------- seeds

# The valid examples of test_api_virtualservice, test_api_destinationrule,
# test_api_serviceentry_gateway_sidecar and test_api_security, under several apiVersions.
_SPECS: list[tuple[str, str, str]] = [
    ("networking.istio.io/v1beta1", "VirtualService", examples.VS_BOOKINFO_REVIEWS),
    ("networking.istio.io/v1", "VirtualService", examples.VS_ALL_FIELDS),
    ("networking.istio.io/v1", "DestinationRule", examples.DR_ALL_FIELDS),
    ("networking.istio.io/v1", "ServiceEntry", examples.SE_STATIC_ENDPOINTS),
    ("networking.istio.io/v1alpha3", "WorkloadEntry", examples.WORKLOAD_ENTRY),
    ("networking.istio.io/v1", "Gateway", examples.GATEWAY_BOOKINFO),
    ("networking.istio.io/v1", "Sidecar", examples.SIDECAR),
    ("security.istio.io/v1", "PeerAuthentication", examples.PEER_AUTHENTICATION),
    ("security.istio.io/v1beta1", "AuthorizationPolicy", examples.AUTHORIZATION_POLICY),
]


def _seed_text(api: str, kind: str, spec: str, name: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: fuzz\n"
        f"  labels: {{app: fuzz}}\n  annotations: {{note: seed}}\nspec:\n{body}\n"
    )


SEED_TEXTS = [
    _seed_text(api, kind, spec, f"seed-{i}") for i, (api, kind, spec) in enumerate(_SPECS)
]
SEEDS: list[dict[str, Any]] = [yaml.safe_load(t) for t in SEED_TEXTS]


def test_seeds_are_valid() -> None:
    """The mutations below start from valid documents (else they test little)."""
    resources = load_documents("---\n".join(SEED_TEXTS), FILENAME)
    assert [r.kind for r in resources] == [kind for _, kind, _ in _SPECS]


# --------------------------------------------------------------------------- properties

# A payload that records its own execution, for tags that would call Python.
EXECUTED: list[object] = []


def canary(*args: object) -> str:
    """Called only if a YAML tag managed to run Python code."""
    EXECUTED.append(args)
    return "executed"


def _fields(r: Resource) -> tuple[object, ...]:
    return (
        r.api_version,
        r.kind,
        r.name,
        r.namespace,
        r.spec,
        dict(r.labels),
        dict(r.annotations),
        r.document,
    )


def check_errors(exc: ValidationFailed, text: str, filename: str) -> None:
    """Every error names the file, a document and a path or reason, on one line."""
    assert exc.errors, "ValidationFailed without errors"
    # Every document after the first starts with "---"; text after the end of the last
    # one (which needs a "---" first) is reported as one more document.
    most_documents = text.count("---") + 2
    for err in exc.errors:
        assert isinstance(err, FieldError)
        line = str(err)
        assert err.file == filename
        assert 0 <= err.document <= most_documents, line
        if err.document:
            assert line.startswith(f"{filename}: document {err.document}"), line
        else:  # the input as a whole (size): no document to name
            assert line.startswith(f"{filename}: ") and not err.path, line
        assert err.reason.strip(), line
        assert line.isprintable(), line  # one line; user text escaped
        assert len(err.reason) < 1100, line  # user text shortened


def check_round_trip(resources: list[Resource], filename: str) -> None:
    """What loads is JSON and reloads to the same resources (from JSON and from YAML)."""
    stored = [json.loads(json.dumps(r.document, allow_nan=False)) for r in resources]
    for resource, doc in zip(resources, stored, strict=True):
        assert doc == resource.document
        assert _fields(parse_document(doc, "store", 1)) == _fields(resource)
    again = load_documents("---\n".join(yaml.dump(d, Dumper=DUMPER) for d in stored), filename)
    assert [_fields(r) for r in again] == [_fields(r) for r in resources]


def check_load(text: str, filename: str = FILENAME) -> list[Resource] | None:
    """Load ``text``; only ValidationFailed may escape, and it must be well-formed."""
    resources: list[Resource] | None = None
    try:
        resources = load_documents(text, filename)
    except ValidationFailed as exc:
        check_errors(exc, text, filename)
    else:
        check_round_trip(resources, filename)
    assert not EXECUTED, f"a YAML tag ran Python code: {EXECUTED}"
    return resources


# --------------------------------------------------------------------------- strategies

# Characters that are special to YAML, invisible, reordering, or not valid Unicode.
ODD_CHARS = [
    "\x00",
    "\x07",
    "\t",
    "\n",
    "\r",
    "\x85",
    "\u2028",
    "\ufeff",
    "\u200f",
    "\u202e",
    "\ud800",
    "\udfff",
    "\U0010ffff",
    "😀",
    "é",
    "ß",
    "İ",
    "²",
    "٣",
    "\\",
    '"',
    "'",
    ":",
    "#",
    "&",
    "*",
    "!",
    "|",
    ">",
    "%",
    "@",
    "`",
    "-",
    "?",
    "{",
    "}",
    "[",
    "]",
    ",",
    " ",
]
chars = st.one_of(st.characters(), st.sampled_from(ODD_CHARS))
odd_text = st.text(chars, max_size=12)
ODD_STRINGS = [
    "",
    " ",
    "*",
    "~",
    "null",
    "yes",
    "on",
    "-1",
    "0x1F",
    "1e400",
    ".nan",
    "2024-13-45",
    "1:20:30",
    "²",
    "1" * 40,
    "x" * 300,
    "<<",
    "default/reviews",
    "reviews",
]
strings = st.one_of(odd_text, st.sampled_from(ODD_STRINGS))
numbers = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 65536, 2**31, 2**32, 2**63, 2**64, -(2**63) - 1, 10**30, 10**4000]),
    st.floats(),  # includes nan, inf and -0.0
)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
keys = st.one_of(strings, st.integers(-(10**20), 10**20), st.booleans(), st.none(), st.floats())
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=10,
)


def _paths(
    tree: object, path: tuple[Any, ...] = (), inside: frozenset[int] = frozenset()
) -> list[tuple[Any, ...]]:
    """Every path in ``tree``; a container inside itself (a cycle) is not entered again."""
    out = [path]
    if id(tree) in inside:
        return out
    inside |= {id(tree)}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*path, k), inside)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*path, i), inside)
    return out


def _get(tree: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    """Put ``value`` at ``path`` and return the (possibly new) root."""
    if not path:
        return value
    _get(tree, path[:-1])[path[-1]] = value
    return tree


def _nest(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"n": value}
    return value


@st.composite
def mutated(draw: st.DrawFn, tree: Any) -> Any:
    """``tree`` after one mutation at a random path."""
    path = draw(st.sampled_from(_paths(tree)))
    node = _get(tree, path)
    op = draw(st.sampled_from(["replace", "delete", "insert", "wrap", "nest", "share", "cycle"]))
    if op == "replace":
        return _set(tree, path, draw(values))
    if op == "delete" and path:
        del _get(tree, path[:-1])[path[-1]]
        return tree
    if op == "insert" and isinstance(node, dict):
        node[draw(keys)] = draw(values)
        return tree
    if op == "insert" and isinstance(node, list):
        node.insert(draw(st.integers(0, len(node))), draw(values))
        return tree
    if op == "wrap":
        return _set(tree, path, draw(st.sampled_from([[node], {"x": node}])))
    if op == "nest":  # sometimes past the depth limit
        depth = draw(st.integers(1, 120))
        return _set(tree, path, _nest(node, depth, draw(st.booleans())))
    if op == "share":  # the same object twice: the dumper writes an anchor and an alias
        other = draw(st.sampled_from(_paths(tree)))
        if other[: len(path)] != path:  # not inside itself
            return _set(tree, other, node)
        return tree
    if op == "cycle" and isinstance(node, list | dict):  # the dumper writes &id [*id]
        if isinstance(node, list):
            node.append(node)
        else:
            node["self"] = node
        return tree
    return _set(tree, path, draw(scalars))


@st.composite
def dumped(draw: st.DrawFn, tree: Any) -> str:
    """``tree`` as YAML, in one of several styles."""
    style: dict[str, Any] = {
        "sort_keys": False,  # keys of mixed types cannot be sorted
        "allow_unicode": draw(st.booleans()),
        "default_flow_style": draw(st.sampled_from([False, True, None])),
        "width": draw(st.sampled_from([80, 100_000])),
    }
    try:
        text: str = yaml.dump(tree, Dumper=DUMPER, **style)
    except UnicodeEncodeError:  # libyaml cannot write a lone surrogate; PyYAML escapes it
        text = yaml.dump(tree, Dumper=yaml.SafeDumper, **style)
    return text


@st.composite
def mutated_document(draw: st.DrawFn) -> str:
    """A seed with up to four tree mutations, as YAML."""
    tree = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        tree = draw(mutated(tree))
    return draw(dumped(tree))


SNIPPETS = [
    "&a ",
    "*a",
    "<<: *a\n",
    "&b [*b]",
    "!!binary ",
    "!!set ",
    "!!omap ",
    "!!float ",
    "!!int ",
    "!!bool ",
    "!!str ",
    "!!timestamp ",
    "!!null ",
    "!!map ",
    "!!seq ",
    "!custom ",
    "!<tag:example.com,2000:x> ",
    f"!!python/object/apply:{__name__}.canary [1]",
    f"!!python/name:{__name__}.canary",
    f"!!python/object/new:{__name__}.canary [1]",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "%TAG !e! tag:example.com,2000:\n",
    "? ",
    ": ",
    "- ",
    "9" * 5000,
    "0x" + "f" * 40,
    "1e400",
    "-.inf",
    ".nan",
    "2024-13-45",
    "\t",
    '"\\ud800"',
    '"\\0\\x07\\u202e"',
]


@st.composite
def text_edit(draw: st.DrawFn, text: str) -> str:
    """``text`` with one edit: a snippet or characters inserted, a line repeated, ..."""
    lines = text.splitlines(keepends=True) or [""]
    op = draw(st.sampled_from(["snippet", "chars", "repeat", "drop", "cut", "indent"]))
    pos = draw(st.integers(0, len(text)))
    if op == "snippet":
        return text[:pos] + draw(st.sampled_from(SNIPPETS)) + text[pos:]
    if op == "chars":
        end = pos + draw(st.integers(0, 3))
        return text[:pos] + draw(st.text(chars, max_size=4)) + text[end:]
    i = draw(st.integers(0, len(lines) - 1))
    if op == "repeat":  # in a block mapping, this makes a duplicate key
        return "".join(lines[: i + 1] + lines[i:])
    if op == "drop":
        return "".join(lines[:i] + lines[i + 1 :])
    if op == "indent":
        return "".join([*lines[:i], " " * draw(st.integers(1, 4)) + lines[i], *lines[i + 1 :]])
    return text[:pos]


@st.composite
def edited_text(draw: st.DrawFn) -> str:
    """A seed's text (or one of its YAML dumps) with up to four text edits."""
    text = draw(st.sampled_from(SEED_TEXTS) | st.sampled_from(SEEDS).flatmap(dumped))
    for _ in range(draw(st.integers(1, 4))):
        text = draw(text_edit(text))
    return text


def _documents(part: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Several documents (some empty, some valid, some from ``part``) in one text."""
    one = st.one_of(part, part, st.sampled_from(SEED_TEXTS), st.sampled_from(["", "# c\n"]))
    return st.lists(one, min_size=1, max_size=4).map(lambda docs: "---\n".join(docs))


# --------------------------------------------------------------------------- tests


@settings(FUZZ, max_examples=500)
@given(_documents(mutated_document()))
def test_mutated_documents(text: str) -> None:
    check_load(text)


@settings(FUZZ, max_examples=500)
@given(_documents(edited_text()))
def test_edited_text(text: str) -> None:
    check_load(text)


# Top-level fields: the real ones (so generated documents get past the first checks)
# plus anything.
top_keys = st.sampled_from(["apiVersion", "kind", "metadata", "spec", "status"]) | keys
top_values = (
    st.sampled_from([*{t for api, kind, _ in _SPECS for t in (api, kind)}, {"name": "x"}]) | values
)


@settings(FUZZ, max_examples=300)
@given(
    _documents(
        st.one_of(
            st.dictionaries(top_keys, top_values, max_size=6),
            values,  # including top-level scalars and lists
        ).flatmap(dumped)
    )
)
def test_generated_documents(text: str) -> None:
    check_load(text)


@st.composite
def big_input(draw: st.DrawFn) -> str:
    """Megabytes: a huge scalar or a long list somewhere in a seed, or many documents."""
    kind = draw(st.sampled_from(["scalar", "list", "documents"]))
    if kind == "documents":  # sometimes past the 1,000-document limit
        seed = draw(st.sampled_from(SEED_TEXTS))
        count = draw(st.integers(900, 1100))
        return "---\n".join(seed.replace("name: seed-", f"name: n{i}-") for i in range(count))
    tree = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    path = draw(st.sampled_from(_paths(tree)))
    size = draw(st.integers(1_000_000, 3_000_000))
    big: Any = "x" * size if kind == "scalar" else ["item"] * (size // 50)
    return draw(dumped(_set(tree, path, big)))


@settings(FUZZ, max_examples=4)
@given(big_input())
def test_big_inputs(text: str) -> None:
    assert len(text) > 100_000
    check_load(text)


yaml_alphabet = st.sampled_from(list("ab01 :-[]{},'\"\n#&*!|>?%@`.~\\\t") + ODD_CHARS)


@settings(FUZZ, max_examples=500)
@given(st.text(yaml_alphabet, max_size=80) | st.text(max_size=40))
def test_arbitrary_text(text: str) -> None:
    check_load(text)


def _wrong_values(current: object) -> list[object]:
    """A value of every JSON type but ``current``'s; numbers JSON cannot hold for numbers."""
    candidates: list[object] = [None, True, 7, 1.5, "x", [1], {"x": 1}]
    wrong = [v for v in candidates if type(v) is not type(current)]
    return [*wrong, 2**64, float("nan")] if _is_number(current) else wrong


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.parametrize("seed", range(len(SEEDS)), ids=[kind for _, kind, _ in _SPECS])
def test_wrong_type_at_every_path(seed: int) -> None:
    """Every path of every seed, given a value of each other type, is refused.

    Only null (an absent optional field) and one number for another (7 for 1.5) may pass.
    """
    tried = 0
    for path in _paths(SEEDS[seed])[1:]:
        current = _get(SEEDS[seed], path)
        for value in _wrong_values(current):
            tree = _set(copy.deepcopy(SEEDS[seed]), path, value)
            resources = check_load(yaml.dump(tree, Dumper=DUMPER, sort_keys=False))
            tried += 1
            if resources is not None and value is not None:
                assert _is_number(value) and _is_number(current), (path, value)
    assert tried > 100
