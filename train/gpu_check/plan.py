"""What each section of the GPU check runs: the full check on a CUDA machine, or its tiny CPU smoke."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SECTIONS = ("environment", "bench", "loader", "fit", "fit_torchrun", "audit", "analyze", "tests")
TARGETS = {"calr_over_an": 2.4, "reference_over_calr": 1.4, "loader_over_calr_step": 1.3, "calr_peak_over_an": 1.5}


@dataclass
class Plan:
    """What each section runs: the full GPU check or its CPU smoke."""

    device: str
    world: dict[str, int]  # synthetic world: train, val, test sizes and the generated image size
    fit_arch: str
    fit_arch_options: dict[str, Any]
    image_size: int
    batch_size: int
    epochs: int
    workers: int
    bench: list[tuple[str, dict[str, Any]]]  # (arch, arch options) at image_size, batch_size
    bench_steps: int
    bench_warmup: int
    loader_batches: int
    loader_workers: int
    audit_images: int
    audit_repeats: int
    analyze_rounds: int
    tests: list[str] = field(default_factory=list)  # pytest arguments
    budget_s: float = 470.0  # the tests get what is left of it


def full_plan() -> Plan:
    return Plan(device="cuda", world={"train": 1400, "val": 300, "test": 300, "image_size": 128},
                fit_arch="resnet50", fit_arch_options={}, image_size=448, batch_size=16, epochs=2, workers=16,
                bench=[("resnet50", {}), ("q2l", {})], bench_steps=6, bench_warmup=3, loader_batches=40,
                loader_workers=16, audit_images=256, audit_repeats=2, analyze_rounds=20,
                tests=["tests", "--ignore=tests/test_app.py", "--ignore=tests/test_app_browser.py",
                       "--ignore=tests/test_gpu_check.py"])


def smoke_plan() -> Plan:
    q2l_tiny = {"backbone": "compact", "hidden_dim": 32, "feedforward_dim": 64}
    return Plan(device="cpu", world={"train": 24, "val": 8, "test": 8, "image_size": 32},
                fit_arch="compact", fit_arch_options={"width": 8}, image_size=32, batch_size=8, epochs=2, workers=0,
                bench=[("compact", {"width": 8}), ("q2l", q2l_tiny)], bench_steps=1, bench_warmup=1,
                loader_batches=2, loader_workers=2, audit_images=16, audit_repeats=1, analyze_rounds=2,
                tests=["tests/test_core_metrics.py"], budget_s=120.0)
