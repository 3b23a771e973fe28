"""Load generators: wrk for maximum throughput, hey for latency at a fixed request rate.

Both are driven the same way for every case, so only the path under test differs.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import statistics
import subprocess
from dataclasses import dataclass


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


@dataclass(frozen=True)
class Throughput:
    rps: float
    command: str


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    achieved_rps: float
    errors: int
    command: str
    requests: int
    """Requests answered (any status): what per-request CPU is divided by."""


def max_throughput(url: str, host: str, seconds: float, connections: int = 16) -> Throughput:
    """Closed-loop saturation with wrk (one thread: the machine has two cores to share)."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "-H",
        f"Host: {host}",
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    if not match:
        raise RuntimeError(f"wrk said: {out.stdout}{out.stderr}")
    return Throughput(float(match.group(1)), " ".join(cmd))


def _pct(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, round(p / 100 * (len(sorted_ms) - 1))))
    return sorted_ms[k]


def fixed_rate(url: str, host: str, seconds: float, rps: int = 1000, workers: int = 10) -> Latency:
    """Latency at ``rps`` requests/s with hey: ``workers`` each limited to rps/workers."""
    cmd = [
        "hey",
        "-z",
        f"{max(1, round(seconds))}s",
        "-c",
        str(workers),
        "-q",
        str(rps // workers),
        "-host",
        host,
        "-o",
        "csv",
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    ok = sorted(float(r["response-time"]) * 1000 for r in rows if r["status-code"] == "200")
    errors = sum(1 for r in rows if r["status-code"] != "200")
    return Latency(
        _pct(ok, 50),
        _pct(ok, 90),
        _pct(ok, 99),
        len(rows) / max(1, round(seconds)),
        errors,
        " ".join(cmd),
        len(rows),
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
