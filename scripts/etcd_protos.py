"""Regenerate the vendored etcd gRPC stubs in src/tsunagi/store/etcd/_proto (`make etcd-protos`).

With ``--upstream DIR`` (a checkout of github.com/etcd-io/etcd), first re-vendor rpc.proto,
kv.proto and auth.proto from ``DIR/api``: the grpc-gateway, OpenAPI, gogoproto and versionpb
annotations are dropped (they change no wire format and would pull in four more proto trees)
and the imports are pointed at the vendored copies. Then the ``_pb2``/``_pb2_grpc`` modules are
generated from the vendored protos with grpcio-tools (a dev dependency).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PROTO_DIR = SRC / "tsunagi" / "store" / "etcd" / "_proto"
PROTO_IMPORT = "tsunagi/store/etcd/_proto"
UPSTREAM = {
    "rpc.proto": "etcdserverpb/rpc.proto",
    "kv.proto": "mvccpb/kv.proto",
    "auth.proto": "authpb/auth.proto",
}
DROPPED_IMPORTS = ("google/api/", "protoc-gen-openapiv2/", "gogoproto/", "etcd/api/versionpb/")


def _drop_option_blocks(text: str) -> str:
    """Remove ``option (ext) = { ... };`` blocks; their braces nest, so no single regex."""
    out: list[str] = []
    pos = 0
    opening = re.compile(r"option\s*\([^)]*\)\s*=\s*\{")
    while (m := opening.search(text, pos)) is not None:
        out.append(text[pos : m.start()])
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        while i < len(text) and text[i] in " \t;":
            i += 1
        pos = i
    out.append(text[pos:])
    return "".join(out)


def strip(text: str) -> str:
    """``text`` (an upstream etcd proto) without its annotations, importing the vendored copies."""
    text = _drop_option_blocks(text)
    text = re.sub(r"^\s*option\s*\((?:versionpb|gogoproto)[^;]*;[ \t]*\n", "", text, flags=re.M)
    text = re.sub(r"\s*\[\s*\((?:versionpb|gogoproto)[^\]]*\]", "", text)
    for prefix in DROPPED_IMPORTS:
        text = re.sub(rf'^import\s+"{re.escape(prefix)}[^"]*";[ \t]*\n', "", text, flags=re.M)
    for name, path in UPSTREAM.items():
        text = text.replace(f'import "etcd/api/{path}";', f'import "{PROTO_IMPORT}/{name}";')
    return re.sub(r"\n{3,}", "\n\n", text)


def vendor(upstream: Path) -> None:
    for name, path in UPSTREAM.items():
        source = upstream / "api" / path
        if not source.is_file():
            sys.exit(f"{source} not found: --upstream must be a checkout of etcd-io/etcd")
        (PROTO_DIR / name).write_text(strip(source.read_text()))


def generate() -> None:
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("grpcio-tools is missing: pip install -e '.[dev]'")
    protos = [f"{PROTO_IMPORT}/{name}" for name in UPSTREAM]
    include = Path(protoc.__file__).parent / "_proto"  # protobuf's own well-known types
    args = ["protoc", f"-I{SRC}", f"-I{include}", f"--python_out={SRC}"]
    args += [f"--grpc_python_out={SRC}", *protos]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    for name in UPSTREAM:  # only rpc.proto has services; the others' grpc modules are empty
        stem = name.removesuffix(".proto")
        if stem != "rpc":
            (PROTO_DIR / f"{stem}_pb2_grpc.py").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, help="an etcd checkout to re-vendor from")
    args = parser.parse_args()
    if args.upstream is not None:
        vendor(args.upstream)
    generate()


if __name__ == "__main__":
    main()
