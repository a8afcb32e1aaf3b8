"""``scripts/gpu_check.sh OUTDIR [--cpu-smoke]``: the prepared GPU check, one command on a stock CUDA machine.

Runs the plan's sections in order, each timed and written to OUTDIR/gpu_check.json as soon as it ends
(see :mod:`train.gpu_check`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spml.runtime import atomic_write_text
from train.gpu_check.plan import SECTIONS, Plan, full_plan, smoke_plan
from train.gpu_check.sections import analyze, audit, bench, environment, fit, fit_torchrun, loader, log, tests


def run_check(outdir: Path, plan: Plan) -> dict[str, Any]:
    outdir.mkdir(parents=True, exist_ok=True)
    report_path = outdir / "gpu_check.json"
    results: dict[str, Any] = {}
    started = time.perf_counter()
    steps: dict[str, Callable[..., dict[str, Any]]] = {
        "environment": environment, "bench": bench, "loader": loader, "fit": fit, "fit_torchrun": fit_torchrun,
        "audit": audit, "analyze": analyze}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as temporary:
        work = Path(temporary)
        for name in SECTIONS:
            log(f"section {name}")
            start = time.perf_counter()
            try:
                if name == "tests":
                    results[name] = tests(plan, work, results, plan.budget_s - (start - started))
                else:
                    results[name] = steps[name](plan, work, results)
            except Exception as error:  # noqa: BLE001 - one failing section must not hide the others' figures
                traceback.print_exc()
                results[name] = {"error": f"{type(error).__name__}: {error}"}
            results[name]["seconds"] = round(time.perf_counter() - start, 2)
            atomic_write_text(report_path, json.dumps(results, indent=2) + "\n")
    results["total_seconds"] = round(time.perf_counter() - started, 2)
    results["gradio_imported_by_check"] = "gradio" in sys.modules  # the GPU machine has no gradio
    atomic_write_text(report_path, json.dumps(results, indent=2) + "\n")
    log(f"done in {results['total_seconds']:.0f} s; figures in {report_path}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path, help="where gpu_check.json (and, from the script, the log) go")
    parser.add_argument("--cpu-smoke", action="store_true", help="every section tiny, on the CPU")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        # One thread per process: the smoke's tensors are tiny, and on a busy machine several threads
        # per process spin against each other (its steps ran 50x slower with two threads under load).
        os.environ["OMP_NUM_THREADS"] = "1"  # for the subprocesses too
        torch.set_num_threads(1)
        plan = smoke_plan()
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA GPU here; run with --cpu-smoke for the CPU version", file=sys.stderr)
            return 2
        plan = full_plan()
    results = run_check(args.outdir, plan)
    failed = [name for name in SECTIONS if "error" in results[name]]
    if results["tests"].get("failed") or results["tests"].get("errors") or results["tests"].get("timed_out"):
        failed.append("tests")
    if failed:
        log(f"sections with errors or failures: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
