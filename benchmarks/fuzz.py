"""Long fuzzing run: many random damaged files per target, and what they found.

CI runs every fuzzing target of ``tests/fuzz/`` with a few derandomized
examples; this script runs them with ``--examples`` random examples each (the
nightly-style run) and prints a table: per target the examples run, the share
refused (the rest were accepted, as the undamaged file or honestly), those
hypothesis dropped as invalid, the wall time, and
the failures found (none, if the invariant of ``tests/fuzz/fuzzing.py`` held).

    python benchmarks/fuzz.py                  # 10,000 examples per target
    python benchmarks/fuzz.py --examples 500 -k modelfile

Each target runs in its own pytest process (``-p no:cacheprovider``, hypothesis'
statistics on), in parallel over ``--jobs`` processes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tests" / "fuzz"


def targets(pattern: str | None) -> list[str]:
    """Node ids of the fuzzing tests (``file::test``), optionally filtered."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", str(FUZZ)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout
    ids = [line.strip() for line in out.splitlines() if "::" in line]
    return [i for i in ids if pattern is None or pattern in i]


def run(node: str, examples: int) -> dict:
    env = {**os.environ, "POLLUX_FUZZ_EXAMPLES": str(examples)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore",
            "--hypothesis-show-statistics",
            node,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    text = proc.stdout + proc.stderr
    counts = re.findall(r"(\d+) passing, (\d+) failing, and (\d+) invalid", text)
    ran = sum(int(a) + int(b) for a, b, _ in counts)
    invalid = sum(int(c) for _, _, c in counts)
    refused = re.findall(r"([\d.]+)%, outcome: refused", text)
    failure = ""
    if proc.returncode != 0:
        errors = [line for line in text.splitlines() if line.startswith("E ")]
        failure = errors[0][2:].strip()[:100] if errors else f"exit {proc.returncode}"
    return {
        "target": node.split("/")[-1],
        "examples": ran,
        "invalid": invalid,
        "refused": float(refused[-1]) if refused else 0.0,
        "seconds": time.perf_counter() - t0,
        "failure": failure,
        "log": text,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("-k", dest="pattern", default=None, help="filter targets")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--logs", type=Path, default=None, help="folder for logs")
    args = parser.parse_args(argv)
    nodes = targets(args.pattern)
    print(f"{len(nodes)} targets, {args.examples} examples each, {args.jobs} jobs")
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run, nodes, [args.examples] * len(nodes)))
    print(
        f"{'target':52s} {'examples':>8s} {'refused':>8s} {'invalid':>8s} "
        f"{'s':>6s}  found"
    )
    for r in rows:
        print(
            f"{r['target']:52s} {r['examples']:8d} {r['refused']:7.1f}% "
            f"{r['invalid']:8d} {r['seconds']:6.0f}  {r['failure'] or 'nothing'}"
        )
        if args.logs is not None:
            args.logs.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^\w.-]", "_", r["target"])
            (args.logs / f"{name}.log").write_text(r["log"])
    total = sum(r["examples"] for r in rows)
    failed = [r for r in rows if r["failure"]]
    print(f"total: {total} examples, {len(failed)} target(s) found a failure")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
