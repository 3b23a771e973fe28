"""The loader's limits, and regression tests for bad input that used to crash or get in.

Each ``test_bug_*`` names what happened before the fix. The property-based search that
looks for more such input is in ``test_api_fuzz.py``.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tsunagi.api import (
    FieldError,
    PeerAuthenticationSpec,
    ValidationFailed,
    load_documents,
    parse_document,
    yamlread,
)
from tsunagi.cli import main as cli

DR = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr}\n"
DR_SPEC = DR + "spec: {host: reviews}\n"


def _errors(text: str, **limits: int) -> list[FieldError]:
    with pytest.raises(ValidationFailed) as info:
        load_documents(text, "f.yaml", **limits)
    return info.value.errors


def _error(text: str, **limits: int) -> FieldError:
    [err] = _errors(text, **limits)
    return err


def _vs(spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    head = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\n"
    return f"{head}spec:\n{body}\n"


def _vs_errors(spec: str) -> dict[str, str]:
    """Path → reason of each error in a VirtualService with ``spec``."""
    return {e.path: e.reason for e in _errors(_vs(spec))}


@pytest.fixture(params=["libyaml", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with libyaml's parser and with PyYAML's pure-Python one."""
    if request.param == "libyaml":
        if not yaml.__with_libyaml__:
            pytest.skip("PyYAML was built without libyaml")
        monkeypatch.setattr(yamlread, "LOADER", yamlread._CLoader)
    else:
        monkeypatch.setattr(yamlread, "LOADER", yamlread._PyLoader)
    return str(request.param)


@pytest.fixture
def constructed(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records every YAML node turned into a Python object."""
    calls: list[object] = []
    original = yamlread._StrictConstructor.construct_object

    def spy(self: Any, node: Any, deep: bool = False) -> Any:
        calls.append(node)
        return original(self, node, deep)

    monkeypatch.setattr(yamlread._StrictConstructor, "construct_object", spy)
    return calls


# --------------------------------------------------------------------------- limits


def _laughs(levels: int, width: int = 10) -> str:
    """The "billion laughs": each level lists the previous one ``width`` times."""
    lines = ["  l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return DR_SPEC + "status:\n" + "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_before_anything_is_expanded(
    parser: str, constructed: list[object]
) -> None:
    text = _laughs(9)  # 10**9 strings once expanded, from 500 bytes
    assert len(text) < 1000
    err = _error(text)
    assert err.document == 1
    assert "expands to more than 100000 YAML nodes" in err.reason
    assert "max_document_nodes" in err.reason
    assert err.reason.startswith("line 10, column ")  # in l4, where the count went over
    assert constructed == []  # refused while composing: no Python object was built


def test_laughs_within_the_limit_load_expanded(parser: str) -> None:
    [res] = load_documents(_laughs(4))  # 10**4 strings: big, but allowed
    assert len(res.document["status"]["l3"]) == 10
    assert json.dumps(res.document).count("lol") == 10 + 100 + 1000 + 10000


def test_expanded_nodes_are_counted_across_documents() -> None:
    docs = [_laughs(3).replace("name: dr", f"name: dr{i}") for i in range(10)]
    # each document: 1,000 strings plus the lists around them
    assert load_documents("---\n".join(docs[:5]), max_total_nodes=10_000)
    err = _error("---\n".join(docs), max_total_nodes=10_000)
    assert "more than 10000 YAML nodes in total" in err.reason
    assert "split it into several files" in err.reason
    assert err.document == 8  # about 1,250 nodes each


def test_aliases_share_config_without_limit_trouble() -> None:
    text = DR + textwrap.dedent(
        """\
        spec:
          host: reviews
          subsets:
          - name: v1
            labels: {version: v1}
            trafficPolicy: &pool
              connectionPool: {tcp: {maxConnections: 10}}
          - name: v2
            labels: {version: v2}
            trafficPolicy: *pool
        """
    )
    [res] = load_documents(text)
    subsets = res.document["spec"]["subsets"]
    assert subsets[0]["trafficPolicy"] == subsets[1]["trafficPolicy"]
    assert subsets[0]["trafficPolicy"] is not subsets[1]["trafficPolicy"]  # plain copies


def test_recursive_alias_is_refused(parser: str) -> None:
    err = _error(DR_SPEC + "status: &a [*a]\n")
    assert "alias *a is used inside the node it names" in err.reason
    assert err.reason.startswith("invalid YAML: line 5, column ")


@pytest.mark.parametrize("opener", ["[", "{a: ", "- ", "a:\n"])
def test_nesting_deeper_than_max_depth_is_refused(parser: str, opener: str) -> None:
    # "a:\n": block mappings, each indented one more
    deep = "".join(" " * i + "a:\n" for i in range(150)) if opener == "a:\n" else opener * 150
    err = _errors(DR_SPEC + "status:\n  " + deep.replace("\n", "\n  ") + "\n")[0]
    assert "nested more than 100 levels deep" in err.reason
    assert "max_depth" in err.reason


def test_max_depth_boundary() -> None:
    def text(depth: int) -> str:  # the document itself is level 1, status level 2
        return DR_SPEC + "status: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"

    assert load_documents(text(10), max_depth=10)
    assert "nested more than 10 levels" in _error(text(11), max_depth=10).reason
    assert load_documents(text(100))
    assert "nested more than 100 levels" in _error(text(101)).reason


def test_bug_deep_nesting_raised_recursion_error(parser: str) -> None:
    # PyYAML composes recursively: 10,000 "[" used to end in RecursionError.
    err = _errors(DR_SPEC + "status: " + "[" * 10_000 + "]" * 10_000 + "\n")[0]
    # libyaml's scanner has its own (lower) flow-nesting cap and stops first.
    if parser == "libyaml":
        assert err.reason.endswith("exceeded maximum nesting depth")
    else:
        assert "nested more than 100 levels deep" in err.reason and "max_depth" in err.reason


def test_parse_document_refuses_deep_and_cyclic_data() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["a"] = cyclic
    doc = {**yaml.safe_load(DR_SPEC), "status": cyclic}
    with pytest.raises(ValidationFailed) as info:
        parse_document(doc, "store", 1)
    [err] = info.value.errors
    assert err.reason == "nested more than 100 levels deep"
    assert err.path.startswith("status.a.a.a")


def test_max_documents() -> None:
    assert load_documents("---\n" * 1000) == []  # 1,000 (empty) documents: fine
    err = _error("---\n" * 1001)
    assert err.document == 1001
    assert "more than 1000 YAML documents" in err.reason
    assert "max_documents" in err.reason
    err = _error(
        "---\n".join(DR_SPEC.replace("dr}", f"dr{i}}}") for i in range(3)), max_documents=2
    )
    assert err.document == 3


def test_max_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parsing(*args: object) -> None:
        raise AssertionError("text over the size limit must not be parsed")

    assert load_documents("#" * 100, max_bytes=100) == []
    monkeypatch.setattr(yamlread, "LOADER", no_parsing)
    err = _error("#" * 101, max_bytes=100)
    assert (err.document, err.path) == (0, "")
    assert str(err).startswith("f.yaml: input is ")
    # 8 MiB in UTF-8 bytes, not characters: "é" takes two
    text = "# " + "é" * (4 * 1024 * 1024)
    assert len(text) < yamlread.MAX_BYTES
    err = _error(text)
    assert "input is 8.0 MiB, more than the limit of 8 MiB" in err.reason
    assert "split it" in err.reason and "max_bytes" in err.reason


def test_a_multi_megabyte_file_loads() -> None:
    docs = [
        f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: dr\n"
        f"  namespace: ns{i}\n  annotations: {{blob: {'x' * 3000}}}\nspec: {{host: r}}\n"
        for i in range(1000)
    ]
    text = "---\n".join(docs)
    assert len(text) > 3_000_000
    resources = load_documents(text)
    assert len(resources) == 1000
    assert resources[-1].annotations["blob"] == "x" * 3000


def test_limits_are_documented_module_constants() -> None:
    assert yamlread.MAX_BYTES == 8 * 1024 * 1024
    assert yamlread.MAX_DOCUMENTS == 1000
    assert yamlread.MAX_DEPTH == 100
    assert yamlread.MAX_DOCUMENT_NODES == 100_000
    assert yamlread.MAX_TOTAL_NODES == 1_000_000
    doc = load_documents.__doc__ or ""
    for name in ("max_bytes", "max_documents", "max_depth", "max_document_nodes"):
        assert name in doc


# --------------------------------------------------------------------------- duplicate keys


def test_duplicate_keys_name_the_key_and_the_document(parser: str) -> None:
    text = DR_SPEC + "---\n" + DR.replace("dr}", "dr2}") + "spec:\n  host: a\n  host: b\n"
    err = _error(text)
    assert err.document == 2
    assert 'duplicate key "host" (first at line 10)' in err.reason
    assert "line 11, column 3" in err.reason


def test_bug_merge_key_override_was_called_a_duplicate() -> None:
    text = DR + "spec:\n  <<: &base {host: a, exportTo: ['.']}\n  host: b\n"
    [res] = load_documents(text)
    assert res.document["spec"] == {"host": "b", "exportTo": ["."]}
    # explicit keys must still be unique next to a merge
    assert "duplicate key" in _error(text + "  host: c\n").reason


def test_a_construction_error_spoils_only_its_document() -> None:
    text = DR + "spec: {host: !!binary aGk=}\n---\n" + DR.replace("dr}", "dr2}") + "spec: {}\n"
    errors = _errors(text)
    assert [(e.document, e.path) for e in errors] == [(1, ""), (2, "spec.host")]


# --------------------------------------------------------------------------- regressions


@pytest.mark.parametrize(
    ("bad", "code"),
    [("\x00", "U+0000"), ("\x07", "U+0007"), ("\ud800", "U+D800"), ("\x1b", "U+001B")],
)
def test_bug_control_characters_raised_reader_error(parser: str, bad: str, code: str) -> None:
    # PyYAML checks the whole text up front and raised ReaderError, not ValidationFailed.
    text = DR_SPEC + "---\n" + DR_SPEC.replace("reviews", f"rev{bad}iews")
    err = _error(text)
    assert err.document == 2
    assert f"line 9, column 17: character {code}" in err.reason


def test_bug_lone_surrogate_escape_was_accepted(parser: str) -> None:
    # "\ud800" in double quotes made a str that cannot be written as UTF-8 (PyYAML's own
    # parser accepts the escape; libyaml refuses it).
    err = _error(DR_SPEC + 'status: {a: "x\\ud800"}\n')
    if parser == "libyaml":
        assert "invalid Unicode character escape code" in err.reason
    else:
        assert (err.path, err.reason) == (
            "status.a",
            "string contains a lone surrogate (not valid Unicode)",
        )


def test_bug_huge_integer_raised_value_error() -> None:
    # int() refuses more than 4,300 digits with a ValueError that escaped the loader.
    err = _error(DR_SPEC + "status: {n: " + "9" * 5000 + "}\n")
    assert "is out of range (at most 64 bits)" in err.reason
    assert "(5000 characters)" in err.reason  # the number is not echoed in full
    err = _error(DR_SPEC + f"status: {{n: {2**64}}}\n")
    assert (err.path, err.reason) == ("status.n", "integer is out of range (at most 64 bits)")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("!!float abc", 'cannot read "abc" as !!float'),  # was ValueError
        ("!!int abc", 'cannot read "abc" as !!int'),  # was ValueError
        ("!!bool maybe", 'cannot read "maybe" as !!bool'),  # was KeyError
        ("!!int [1]", "expected a scalar node, but found sequence"),
        ("!!float ''", 'cannot read "" as !!float'),  # was IndexError
        ("!!int ''", 'cannot read "" as !!int'),  # was IndexError
    ],
)
def test_bug_badly_tagged_scalars_raised_python_errors(value: str, reason: str) -> None:
    err = _error(DR_SPEC + f"status: {{x: {value}}}\n")
    assert err.reason.startswith("invalid YAML: line 5, column ")
    assert reason in err.reason


def test_bug_invalid_timestamps_raised_value_error() -> None:
    # Timestamps are kept as text, as Kubernetes does (the store holds JSON).
    text = DR.replace("{name: dr}", "{name: dr, creationTimestamp: 2024-01-01T00:00:00Z}")
    text += "spec: {host: reviews}\nstatus: {a: 2024-13-45, b: !!timestamp later}\n"
    [res] = load_documents(text)
    assert res.document["metadata"]["creationTimestamp"] == "2024-01-01T00:00:00Z"
    assert res.document["status"] == {"a": "2024-13-45", "b": "later"}


EXECUTED: list[object] = []


def canary(*args: object) -> None:
    """Would record a call if a YAML tag ever ran Python code."""
    EXECUTED.append(args)


@pytest.mark.parametrize(
    "tag",
    [
        f"!!python/object/apply:{__name__}.canary [1]",
        f"!!python/object/new:{__name__}.canary [1]",
        f"!!python/name:{__name__}.canary ''",
        f"!!python/module:{__name__} ''",
        f"!!python/object:{__name__}.FieldError {{file: x}}",
        "!!python/object/apply:os.system ['echo pwned']",
    ],
)
def test_python_tags_are_refused_and_never_run(parser: str, tag: str) -> None:
    err = _error(DR_SPEC + f"status: {{x: {tag}}}\n")
    assert "could not determine a constructor for the tag" in err.reason
    assert EXECUTED == []


@pytest.mark.parametrize(
    "tag", ["!!binary aGk=", "!!set {a: null}", "!!omap [{a: 1}]", "!!pairs [{a: 1}]"]
)
def test_bug_values_json_cannot_hold_got_in(tag: str) -> None:
    # bytes, set and tuples reached the store, whose json.dumps then failed.
    err = _error(DR_SPEC.replace("host: reviews", f"host: {tag}"))
    assert f"the {tag.split()[0]} tag is not supported" in err.reason


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1.0e+400"])
def test_bug_non_finite_numbers_got_in(value: str) -> None:
    err = _error(DR_SPEC + f"status: {{x: {value}}}\n")
    assert err.path == "status.x"
    assert "is not allowed (JSON has no NaN or infinity)" in err.reason


@pytest.mark.parametrize(
    ("key", "shown"),
    [("true", "true"), ("on", "true"), ("~", "null"), ("1.5", "1.5")],
)
def test_bug_non_string_keys_did_not_survive_the_store(key: str, shown: str) -> None:
    # {true: ...} loaded as key 1 but was stored as "true", which did not load back.
    text = (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
        "spec:\n  selector: {matchLabels: {app: a}}\n"
        f"  portLevelMtls: {{{key}: {{mode: STRICT}}}}\n"
    )
    err = _error(text)
    assert err.path == "spec.portLevelMtls"
    assert f"mapping key {shown} must be a string; quote it" in err.reason


def test_integer_keys_are_stored_as_strings_and_load_back() -> None:
    text = (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
        "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls: {8080: {mode: STRICT}}\n"
    )
    [res] = load_documents(text)
    assert res.document["spec"]["portLevelMtls"] == {"8080": {"mode": "STRICT"}}
    assert isinstance(res.spec, PeerAuthenticationSpec)
    assert res.spec.port_level_mtls[8080].mode == "STRICT"
    stored = json.loads(json.dumps(res.document))
    again = parse_document(stored, "store", 1)
    assert (again.spec, again.document) == (res.spec, res.document)


def test_bug_huge_durations_were_accepted_or_crashed() -> None:
    huge = "9" * 400 + "h"  # float() made this inf; maxAge's int(inf) raised OverflowError
    errs = _vs_errors(
        f"""
        hosts: [a]
        http:
        - timeout: {huge}
          corsPolicy: {{maxAge: {huge}}}
          retries: {{perTryTimeout: 3000000000000h}}
          route: [{{destination: {{host: a}}}}]
        """
    )
    for path in ("timeout", "corsPolicy.maxAge", "retries.perTryTimeout"):
        assert "is too long; at most 315576000000s" in errs[f"spec.http[0].{path}"]


def test_bug_non_ascii_digits_crashed_port_and_retry_checks() -> None:
    # "²".isdigit() is true, and int("²") raised ValueError.
    policy = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
        "spec:\n  rules:\n  - to: [{operation: {ports: ['²', '٣', '%s']}}]\n"
        "    when: [{key: destination.port, values: ['²']}]\n" % ("0" * 5000 + "1")
    )
    paths = {e.path for e in _errors(policy)}
    assert paths == {
        "spec.rules[0].to[0].operation.ports[0]",
        "spec.rules[0].to[0].operation.ports[1]",
        "spec.rules[0].to[0].operation.ports[2]",
        "spec.rules[0].when[0].values[0]",
    }
    vs = _vs(
        "hosts: [a]\nhttp:\n- retries: {retryOn: '5xx,²'}\n  route: [{destination: {host: a}}]"
    )
    err = _error(vs)
    assert err.path == "spec.http[0].retries.retryOn"
    assert "'²' is not a valid retryOn policy" in err.reason


def test_bug_counts_beyond_int32_were_accepted() -> None:
    # Envoy's protos take these as 32-bit numbers; translation would have failed.
    big = 2**31
    errs = _vs_errors(
        f"""
        hosts: [a]
        http:
        - route:
          - destination: {{host: a}}
            weight: {big}
          retries: {{attempts: {big}}}
        """
    )
    assert errs["spec.http[0].route[0].weight"] == f"must be <= 2147483647, got {big}"
    assert errs["spec.http[0].retries.attempts"] == f"must be <= 2147483647, got {big}"
    total = _vs(
        "hosts: [a]\nhttp:\n- route:\n"
        + "".join(
            f"  - destination: {{host: a, subset: s{i}}}\n    weight: 2000000000\n"
            for i in range(3)
        )
    )
    err = _error(total)
    assert (err.path, err.reason) == (
        "spec.http[0].route",
        "total weight of the destinations must be at most 4294967295",
    )


def test_bug_user_text_broke_error_lines() -> None:
    # Kinds, keys and values were echoed raw: newlines split one error over several lines,
    # and a megabyte value made a megabyte message.
    text = DR.replace("DestinationRule", '"Destination\\nRule\\u202e"') + "spec: {}\n"
    err = _error(text)
    assert err.reason.startswith('unknown kind "Destination\\nRule\\u202e"')
    assert err.kind == '"Destination\\nRule\\u202e"'
    assert "\n" not in str(err)
    err = _error(DR + 'spec: {host: a, "a\\tb": 2}\n')
    assert err.path == 'spec["a\\tb"]'
    err = _error(DR + f"spec: {{host: {'k' * 1_000_000}}}\n")
    assert err.path == "spec.host"
    assert len(str(err)) < 1100
    assert err.reason.endswith("characters)")


def test_bug_check_messages_echoed_raw_text() -> None:
    # The protocol and RE2's own message were put into reasons unescaped (newlines).
    gateway = (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n"
        '  servers: [{port: {number: 80, name: http, protocol: "HTTP\\n"}, hosts: ["*"],'
        " tls: {mode: ISTIO_MUTUAL}}]\n"
    )
    reasons = [e.reason for e in _errors(gateway)]
    assert any("(port protocol is 'HTTP\\n')" in r for r in reasons), reasons
    route = "route: [{destination: {host: a}}]"
    err = _error(_vs(f'hosts: [a]\nhttp:\n- match: [{{uri: {{regex: "(\\n"}}}}]\n  {route}'))
    assert err.reason == "invalid RE2 regular expression '(\\n': missing ) at '(\\n'"


# --------------------------------------------------------------------------- CLI


class _NoServer:
    def request(self, *args: object, **kwargs: object) -> dict[str, object]:
        raise AssertionError("nothing should be sent when the file cannot be read")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.yaml", "No such file or directory"),
        ("", "Is a directory"),
        ("latin1.yaml", "not UTF-8 text (byte 0xe9 at offset 9); save it as UTF-8"),
    ],
)
@pytest.mark.parametrize("command", ["apply", "delete"])
def test_cli_reports_unreadable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, message: str, command: str
) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"kind: Caf\xe9\n")
    path = tmp_path / name
    args = argparse.Namespace(filename=str(path), dry_run=False, wait=False, timeout=1.0)
    run = cli.cmd_apply if command == "apply" else cli.cmd_delete
    assert run(args, _NoServer()) == cli.EXIT_INVALID  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert err == f"error: cannot read {path}: {message}\n"
