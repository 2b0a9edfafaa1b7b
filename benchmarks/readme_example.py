"""The README's worked example, run as written and timed command by command.

Runs every command of the README section "A worked example" in OUT (a fresh directory: the
commands' relative paths land there), under this checkout (``python -m orl_fast``), and writes
``OUT/readme_example.json``: the machine, the date, the load average, each command with its wall
time, its CPU time (user + system of the command and of the processes it waited for, the
DataLoader's workers included) and exit status, and the totals. On a shared machine the CPU
time is the figure to compare, except for ``orl-fast mine``: its Ray workers are not processes
the command waits for, so their CPU time is not counted and mining's wall time is the figure.
Stops at the first command that fails.

    python benchmarks/readme_example.py --out benchmarks/out/readme-example
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_common import machine  # also puts tests/ (the test scaffolding) on the path
from support.common import subprocess_env
from support.readme import worked_example


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="an empty directory to run the example in")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    steps, t_all = [], time.perf_counter()
    for command in worked_example():
        argv = [sys.executable, "-m", "orl_fast", *command.orl_fast_args]
        t0, cpu0 = time.perf_counter(), _children_cpu()
        proc = subprocess.run(argv, cwd=args.out, env=subprocess_env(), capture_output=True,
                              text=True, check=False)
        seconds = round(time.perf_counter() - t0, 1)
        cpu = round(_children_cpu() - cpu0, 1)
        steps.append({"command": command.text, "seconds": seconds, "cpu_seconds": cpu,
                      "rc": proc.returncode})
        print(f"{seconds:8.1f} s  {cpu:8.1f} CPU s  rc {proc.returncode}  {command.text}",
              flush=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            break
    result = {**machine(), "steps": steps,
              "total_seconds": round(time.perf_counter() - t_all, 1),
              "total_cpu_seconds": round(sum(s["cpu_seconds"] for s in steps), 1),
              "load_average": os.getloadavg()}
    Path(args.out, "readme_example.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"total {result['total_seconds']} s, {result['total_cpu_seconds']} CPU s; load "
          f"average {result['load_average']}")
    return max((s["rc"] for s in steps), default=0)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    raise SystemExit(main())
