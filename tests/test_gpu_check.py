"""``scripts/gpu_check.sh OUTDIR --cpu-smoke``: every section of the GPU check runs tiny on the CPU, so
the script that a GPU machine will run cannot rot unnoticed."""

import json
import os
import subprocess
import sys
from numbers import Number
from pathlib import Path

from train.gpu_check.plan import SECTIONS

ROOT = Path(__file__).resolve().parents[1]


def number(value) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def test_cpu_smoke_writes_every_section_with_figures(tmp_path):
    out = tmp_path / "check"
    result = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--cpu-smoke"],
                            env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "section tests" in (out / "gpu_check.log").read_text()
    report = json.loads((out / "gpu_check.json").read_text())
    for name in SECTIONS:
        assert name in report and "error" not in report[name], (name, report.get(name))
        assert number(report[name]["seconds"])
    assert len(report["bench"]["runs"]) == 4  # two models, fp32 and bf16
    for run in report["bench"]["runs"]:
        for key in ("an", "calr", "reference"):
            assert number(run[f"{key}_step_s"]) and run[f"{key}_step_s"] > 0 and number(run[f"{key}_images_per_s"])
            assert run[f"{key}_peak_mib"] is None  # CUDA allocator figures only
        assert number(run["calr_over_an"]) and number(run["reference_over_calr"])
    assert {run["amp"] for run in report["bench"]["runs"]} == {False, True}
    loader = report["loader"]
    assert loader["images_per_s"] > 0 and number(loader["loader_over_calr_step"])
    for name in ("fit", "fit_torchrun"):
        fit = report[name]
        assert fit["killed_after_epoch_1"] and fit["epochs_saved_before_kill"] == 1 and fit["resumed"], fit
        assert fit["epochs"] == 2 and fit["evaluate_matches_summary"] and number(fit["test_map"])
        assert all(number(rate) and rate > 0 for rate in fit["images_per_s_per_epoch"])
    assert number(report["audit"]["audit_images_per_second"]) and number(report["audit"]["ratio"])
    assert number(report["analyze"]["median_ms"]) and report["analyze"]["median_ms"] > 0
    assert report["gradio_imported_by_check"] is False
    assert report["tests"]["passed"] > 0 and report["tests"]["failed"] == 0 and not report["tests"]["timed_out"]
