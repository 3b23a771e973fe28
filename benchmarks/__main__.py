"""``python -m benchmarks [--quick] [--only NAME] [--rounds N --seconds S] [--cases A,B]``: run
the suite, write results and report."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import dataplane, instructions, propagation, scale
from benchmarks.procs import REPO, envoy_binary

SUITES = {
    "dataplane": dataplane,
    "instructions": instructions,
    "propagation": propagation,
    "scale": scale,
}


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not installed"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": len(__import__("os").sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": _version([envoy_binary(), "--version"]).split("version:")[-1].strip(),
        "haproxy": _version(["haproxy", "-v"]),
        "wrk": _version(["wrk", "--version"]),
        "hey": "hey (Debian package)" if _version(["which", "hey"]) != "not installed" else "-",
    }


def _cases(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in dataplane.CASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown case {unknown[0] if unknown else text!r}; "
            f"choose from {', '.join(dataplane.CASES)}"
        )
    return names


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves it still runs")
    parser.add_argument("--only", choices=list(SUITES), action="append")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument(
        "--rounds", type=int, help="data plane only: interleaved rounds (default 5, quick 1)"
    )
    parser.add_argument(
        "--seconds", type=float, help="data plane only: seconds per measurement (default 4)"
    )
    parser.add_argument(
        "--cases",
        type=_cases,
        help="data plane or instructions only: run only these cases, comma-separated (the "
        "data plane's direct always runs): " + ", ".join(dataplane.CASES),
    )
    args = parser.parse_args()
    sizes = {k: v for k in ("rounds", "seconds") if (v := getattr(args, k)) is not None}
    if sizes and args.only != ["dataplane"]:
        parser.error("--rounds and --seconds need --only dataplane")
    if args.cases is not None:
        if args.only not in (["dataplane"], ["instructions"]):
            parser.error("--cases needs --only dataplane or --only instructions")
        sizes["cases"] = args.cases
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    sections = []
    done: dict[str, Any] = {}
    for name in args.only or list(SUITES):
        suite = SUITES[name]
        print(f"== {name}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"tsunagi-bench-{name}-") as tmp:
            result = suite.run(args.quick, Path(tmp), **sizes)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
        (args.out / f"{name}{'-quick' if args.quick else ''}.json").write_text(
            json.dumps({"machine": info, "quick": args.quick, "results": result}, indent=1)
        )
        done[name] = result
        sections.append(_markdown(name, result, done))
    if args.quick:
        print("\n".join(sections))
    else:
        write_report(args.out, args.report)
        print(f"wrote {args.report}")
    return 0


def _markdown(name: str, result: dict[str, Any], others: dict[str, Any]) -> str:
    """A suite's section; the instruction counts are judged with the agent's timed share
    from the data-plane suite's results, when there are some."""
    if name == "instructions":
        return instructions.markdown(result, others.get("dataplane"))
    return str(SUITES[name].markdown(result))


def write_report(results: Path, report: Path) -> None:
    """``docs/benchmarks.md`` from every full (non-quick) result file in ``results``."""
    sections, machines = [], []
    loaded: dict[str, Any] = {}
    for name in SUITES:
        path = results / f"{name}.json"
        if path.exists():
            doc = json.loads(path.read_text())
            machines.append((name, doc["machine"]))
            loaded[name] = doc["results"]
            sections.append(_markdown(name, doc["results"], loaded))
    keys = list(machines[0][1]) if machines else []
    header = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks`); raw numbers in "
        "`benchmarks/results/*.json`. Each suite's machine and date:",
        "",
        "| | " + " | ".join(n for n, _ in machines) + " |",
        "|---|" + "---|" * len(machines),
        *(f"| {k} | " + " | ".join(str(m.get(k, "")) for _, m in machines) + " |" for k in keys),
        "",
    ]
    notes = REPO / "docs" / "benchmarks-notes.md"
    extra = [notes.read_text()] if notes.exists() else []
    report.write_text("\n".join(header + sections + extra))


if __name__ == "__main__":
    raise SystemExit(main())
