"""The sidecar agent's process: the handoff from ``tsunagi run`` to ``python -m tsunagi.agent``,
and the small replacements that keep heavy standard modules out of every sidecar's memory
(its log lines, its work directory, the control plane's address)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tsunagi.agent import handoff, logs
from tsunagi.agent.records import NamedTuple
from tsunagi.agent.run import RunOptions
from tsunagi.agent.workdir import make_workdir, remove_workdir
from tsunagi.client import server_address


def test_the_handoff_carries_every_option_and_the_token() -> None:
    opts = RunOptions(
        service="reviews",
        command=("python", "app.py", "--flag"),
        port=9090,
        protocol="GRPC",
        version="v2",
        labels={"team": "books", "version": "v2"},
        namespace="shop",
        locality="eu/west-1/a",
        outbound_port=15001,
        metrics_port=15020,
        app_metrics="/metrics",
        upstreams=(("tcp-echo", 9000, 19000), ("db.data", 5432, 0)),
        name="reviews-1",
        concurrency=1,
        delta=True,
        envoy="/opt/envoy",
    )
    got, server, token = handoff.decode(handoff.encode(opts, "http://127.0.0.1:15014", "s3cret"))
    assert got == opts
    assert dict(got.labels) == {"team": "books", "version": "v2"}
    assert (server, token) == ("http://127.0.0.1:15014", "s3cret")


def test_the_agent_reads_the_handoff_from_its_descriptor_and_closes_it() -> None:
    opts = RunOptions(service="web", command=("true",))
    r, w = os.pipe()
    os.write(w, handoff.encode(opts, "http://h:1", "t"))
    os.close(w)
    assert handoff.receive([handoff.FD_FLAG, str(r), "--service", "web"]) == (
        opts,
        "http://h:1",
        "t",
    )
    with pytest.raises(OSError):
        os.fstat(r)


def test_the_agent_entry_refuses_to_run_without_a_handoff() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tsunagi.agent"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "tsunagi run" in done.stderr


# What the agent's interpreter does while a sidecar runs, minus Envoy and the app: its
# modules, a request to a local HTTP server (the control plane's place), a port check, its
# work directory, a log line. Then the modules it loaded.
AGENT_LIFE = r"""
import socket, sys, threading
import tsunagi.agent.__main__
from tsunagi.agent.logs import log
from tsunagi.agent.ports import free_ports, wait_listening
from tsunagi.agent.workdir import make_workdir, remove_workdir
from tsunagi.client import Client

srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)

def answer():
    conn, _ = srv.accept()
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ttl\": 15}")
    conn.close()

threading.Thread(target=answer, daemon=True).start()
reply = Client(f"http://localhost:{srv.getsockname()[1]}", "t").request("POST", "/v1/instances", {})
assert reply == {"ttl": 15}, reply
assert wait_listening(srv.getsockname()[1])
free_ports(4)
remove_workdir(make_workdir("tsunagi-test-"))
log.info("%s: registered", "x")
print(" ".join(sorted(sys.modules)))
"""


def test_the_agent_process_loads_none_of_the_clis_modules() -> None:
    done = subprocess.run(
        [sys.executable, "-c", AGENT_LIFE], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert "tsunagi.agent.run" in loaded
    # Each of these cost the sidecar 0.2-0.7 MB of private memory (measured): the CLI's
    # parser, logging, pathlib (with urllib and ipaddress), tempfile and shutil (with random,
    # bz2, lzma), the idna codec that name lookup of a str host imports, and typing.
    heavy = {"argparse", "logging", "pathlib", "urllib", "ipaddress", "tempfile", "shutil"}
    heavy |= {"random", "bz2", "lzma", "encodings.idna", "unicodedata", "tsunagi.cli"}
    heavy |= {"typing", "tsunagi.api", "tsunagi.mesh", "tsunagi.xds", "asyncio", "ssl", "inspect"}
    assert not loaded & heavy, sorted(loaded & heavy)
    assert "registered" in done.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:15014", ("127.0.0.1", 15014)),
        ("http://Control-Plane:8080/", ("control-plane", 8080)),
        ("http://cp.example", ("cp.example", 80)),
        ("HTTP://[::1]:15014/api", ("::1", 15014)),
        ("http://user@host:1", ("host", 1)),
    ],
)
def test_server_addresses(url: str, expected: tuple[str, int]) -> None:
    assert server_address(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        *("https://cp:443", "127.0.0.1:15014", "http://", "http://:80", "http://h:x"),
        *("http://h:0", "http://h:70000", "http://[::1", "http://[::1]x", "ftp://h:1"),
    ],
)
def test_bad_server_addresses(url: str) -> None:
    assert server_address(url) is None


def test_workdir_is_private_and_removed_with_its_contents(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", os.fspath(tmp_path))
    path = make_workdir("tsunagi-x-")
    assert os.path.dirname(path) == os.fspath(tmp_path)
    assert os.path.basename(path).startswith("tsunagi-x-")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert make_workdir("tsunagi-x-") != path
    os.mkfifo(os.path.join(path, "metrics.fifo"))
    os.mkdir(os.path.join(path, "sub"))
    with open(os.path.join(path, "sub", "envoy.log"), "w") as f:
        f.write("x")
    remove_workdir(path)
    assert not os.path.exists(path)
    remove_workdir(path)  # already gone: nothing to do, no error


def test_log_lines_look_like_the_clis_and_follow_tsunagi_log(
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        logs.configure("warning")
        logs.log.info("%s: hidden", "a")
        logs.log.warning("%s: port %d is taken", "a", 80)
        logs.configure("debug")
        logs.log.info("no arguments: %s stays")
    finally:
        logs.configure()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    time_, name, rest = lines[0].split(" ", 2)
    assert len(time_) == 8 and time_[2] == ":" and time_[5] == ":"
    assert (name, rest) == ("tsunagi.agent:", "a: port 80 is taken")
    assert lines[1].endswith("tsunagi.agent: no arguments: %s stays")


class Point(NamedTuple):
    """A record for the test."""

    x: int
    y: int = 0
    """Field docstrings are only comments at run time."""
    label: str = "origin"

    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


def test_records_behave_as_typing_namedtuples() -> None:
    p = Point(3, y=-4)
    assert p == (3, -4, "origin")
    assert (p.x, p.y, p.label, p.norm1()) == (3, -4, "origin", 7)
    assert p._replace(label="p")._asdict() == {"x": 3, "y": -4, "label": "p"}
    assert Point._fields == ("x", "y", "label")
    assert Point._field_defaults == {"y": 0, "label": "origin"}
    assert Point.__doc__ == "A record for the test."
    assert Point.__qualname__ == "Point"
    assert Point.__module__ == __name__
    with pytest.raises(AttributeError):
        p.x = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]


def test_a_record_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError, match="without a default follows"):

        class Bad(NamedTuple):
            a: int = 0
            b: int
