"""Start-up time of the ``spcl`` command: ``--help``/``--version`` and each subcommand's parsing.

Each row is the wall time of a fresh ``python -m spcl ...`` process that only parses its
arguments (``--help`` of the subcommand), median of ``--repeats`` runs, beside a bare Python
start (``python -c pass``) as the floor. The target (issue: CLI start-up) is ≤ 0.5 s for
``spcl --help`` and ``spcl --version`` on the project's 2-core machine; heavy libraries (torch,
NumPy, matplotlib, albumentations) are imported only inside the commands that run.

Run: ``.venv/bin/python benchmarks/cli_startup.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = (
    ("python -c pass", ["-c", "pass"]),
    ("spcl --version", ["-m", "spcl", "--version"]),
    ("spcl --help", ["-m", "spcl", "--help"]),
    *(
        (f"spcl {name} --help", ["-m", "spcl", name, "--help"])
        for name in (
            "run",
            "demo",
            "bench",
            "evaluate",
            "predict",
            "export",
            "data",
            "config",
            "synth",
        )
    ),
)
TARGET_S = 0.5  # spcl --help and --version


def wall_seconds(args: list[str], repeats: int) -> float:
    """Median wall time of ``python ARGS`` over ``repeats`` fresh processes."""
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, capture_output=True)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="processes per row (median)")
    repeats = parser.parse_args().repeats
    print(f"| command | wall (s), median of {repeats} |")
    print("| --- | ---: |")
    for label, args in COMMANDS:
        seconds = wall_seconds(args, repeats)
        mark = " (target ≤ 0.5)" if label in ("spcl --version", "spcl --help") else ""
        print(f"| `{label}` | {seconds:.3f}{mark} |")


if __name__ == "__main__":
    main()
