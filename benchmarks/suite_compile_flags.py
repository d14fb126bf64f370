"""Benchmark: the test suite's XLA:CPU compile settings, measured on a compile-bound part of it.

Why: the suite is compilation-bound (hundreds of small programs, each run a few times), and
``tests/conftest.py`` sets two ``XLA_FLAGS`` for it (LLVM optimisation level 0, and XLA:CPU's
classic fusion emitters instead of its MLIR fusion emitters). This script measures what each
buys: it runs the same test files in a fresh pytest process (one process, no xdist, no
persistent compilation cache) under each variant of :data:`VARIANTS`, the variants interleaved
over ``--repeats`` rounds so that a load change on the machine hits all of them alike, and
reports the wall and CPU seconds (user + system) of each run and each variant's median CPU time
over XLA's defaults.

Writes ``benchmarks/out/suite_compile_flags.json`` (or ``--out``)::

    python benchmarks/suite_compile_flags.py [--tests tests/test_lyapunov.py tests/test_samplers.py] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pifs_jax.results import write_result_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chain_spectrum import machine

REPO = Path(__file__).resolve().parents[1]
#: name -> XLA_FLAGS. conftest.py adds only the settings a caller has not chosen, so each variant
#: names both (the defaults explicitly).
VARIANTS = {
    "xla_defaults": "--xla_backend_optimization_level=2 --xla_cpu_use_fusion_emitters=true",
    "level_0": "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=true",
    "level_0_classic_emitters": "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
}
DEFAULT_TESTS = ("tests/test_lyapunov.py", "tests/test_samplers.py")


def run_tests(tests: list[str], flags: str) -> dict[str, Any]:
    """One pytest process on ``tests`` with ``XLA_FLAGS=flags``: wall and CPU seconds, outcome."""
    env = dict(os.environ, XLA_FLAGS=flags)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", *tests],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "passed": done.returncode == 0,
        "summary": done.stdout.strip().splitlines()[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS), help="test files (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (default: 2)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "suite_compile_flags.json")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for round_ in range(args.repeats):
        for name, flags in VARIANTS.items():
            runs[name].append(run_tests(args.tests, flags))
            print(f"round {round_ + 1} {name}: {runs[name][-1]}", flush=True)
    base = float(np.median([r["cpu_s"] for r in runs["xla_defaults"]]))
    summary = {
        name: {
            "median_cpu_s": float(np.median([r["cpu_s"] for r in rs])),
            "median_wall_s": float(np.median([r["wall_s"] for r in rs])),
            "cpu_over_defaults": float(np.median([r["cpu_s"] for r in rs])) / base,
            "all_passed": all(r["passed"] for r in rs),
        }
        for name, rs in runs.items()
    }
    for name, row in summary.items():
        print(f"{name:>26}: CPU {row['median_cpu_s']:.1f} s ({row['cpu_over_defaults']:.2f} x defaults), "
              f"wall {row['median_wall_s']:.1f} s, passed: {row['all_passed']}")  # fmt: skip
    config = {"tests": args.tests, "repeats": args.repeats, "variants": VARIANTS}
    write_result_json(args.out, {"runs": runs, "summary": summary, "machine": machine()}, config=config, seed=None)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
