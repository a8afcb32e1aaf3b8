"""``scripts/gpu_check.sh OUTDIR [--cpu-smoke]``: the prepared GPU check, one command on a stock CUDA machine.

It needs only what such a machine has (torch, torchvision, safetensors, opencv, pillow, pyyaml, tqdm,
huggingface-hub, pytest, scipy; no gradio, no network) and runs the project from its source tree.
Sections, each timed and written to OUTDIR/gpu_check.json as soon as it ends (a killed check keeps
what it measured); the shell script tees everything into OUTDIR/gpu_check.log:

- ``environment``: torch, CUDA, the card;
- ``bench``: ``train bench`` figures (AN / CALR / reference-style step, images/s, peak memory) for
  ResNet-50 and Q2L at 448 px batch 16, fp32 and bf16, with the issue's target ratios;
- ``loader``: the training loader alone (weak + strong views, 16 workers, 448 px) in images/s against
  the CALR step's images/s;
- ``fit`` and ``fit_torchrun``: a real CALR run (ResNet-50, 448 px, random init, a synthetic world of
  2,000 images, 2 epochs) killed after epoch 1, resumed, then ``train evaluate``; the second under
  ``torchrun --nproc_per_node=1``;
- ``audit``: audit images/s against plain batched inference; ``analyze``: one analysis's latency;
- ``tests``: the test suite without the browser and app tests (those import gradio), last, with
  whatever time is left.

``--cpu-smoke`` runs every section tiny on the CPU (well under a minute) so that a test keeps it working.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spml.runtime import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
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


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    log("$ " + " ".join(command))
    result = subprocess.run(command, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(result.stdout[-4000:])
    sys.stdout.write(result.stderr[-4000:])
    return result


# ----------------------------------------------------------------------------- sections


def environment(plan: Plan, work: Path, results: dict[str, Any]) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "python": platform.python_version(), "cuda_available": cuda,
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0) if cuda else platform.processor(),
            "gpus": torch.cuda.device_count(), "cpu_count": os.cpu_count(), "mode": plan.device,
            "gradio_installed": importlib.util.find_spec("gradio") is not None}


def bench(plan: Plan, work: Path, results: dict[str, Any]) -> dict[str, Any]:
    from train.bench import run_bench

    runs = []
    for arch, options in plan.bench:
        for amp in (False, True):
            figures = run_bench(arch, plan.image_size, plan.batch_size, steps=plan.bench_steps,
                                warmup=plan.bench_warmup, device=plan.device, amp=amp, arch_options=options)
            runs.append(figures)
            log(f"bench {arch} {'bf16' if amp else 'fp32'}: AN / CALR / reference "
                f"{figures['an_step_s'] * 1000:.1f} / {figures['calr_step_s'] * 1000:.1f} / "
                f"{figures['reference_step_s'] * 1000:.1f} ms; CALR/AN {figures['calr_over_an']:.2f} "
                f"(<= {TARGETS['calr_over_an']}), reference/CALR {figures['reference_over_calr']:.2f} "
                f"(>= {TARGETS['reference_over_calr']}), peak CALR/AN {figures['calr_peak_over_an']} "
                f"(<= {TARGETS['calr_peak_over_an']})")
    return {"runs": runs, "targets": TARGETS}


def _calr_step_images_per_s(results: dict[str, Any], arch: str) -> float | None:
    """The CALR step's images/s of the bf16 bench run of ``arch`` (what the loader must outpace)."""
    for run in results.get("bench", {}).get("runs", []):
        if run["arch"] == arch and run["amp"]:
            return run["calr_images_per_s"]
    return None


def _world(plan: Plan, work: Path) -> Path:
    from spml.data import make_synthetic_dataset

    root = work / "world"
    if not (root / "classes.txt").is_file():
        log(f"making a synthetic world of {sum(plan.world[k] for k in ('train', 'val', 'test'))} images")
        make_synthetic_dataset(root, seed=0, progress=False, **plan.world)
    return root


def loader(plan: Plan, work: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Images/s of the training loader alone: decode, resize, weak and strong (RandAugment) views."""
    from torch.utils.data import DataLoader

    from spml.data import ImageDataset, load_dataset, strong_transform, weak_transform
    from spml.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    split = load_dataset(_world(plan, work)).split("train")
    dataset = ImageDataset(split, weak_transform(plan.image_size, IMAGENET_MEAN, IMAGENET_STD),
                           strong_transform(plan.image_size, IMAGENET_MEAN, IMAGENET_STD))
    batches = DataLoader(dataset, batch_size=plan.batch_size, shuffle=True, num_workers=plan.loader_workers,
                         pin_memory=plan.device == "cuda", persistent_workers=False)
    iterator = iter(batches)
    next(iterator)  # workers started, first batch out: the steady state is what a long run sees
    start, images = time.perf_counter(), 0
    for _ in range(plan.loader_batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        images += len(batch["image"])
    seconds = time.perf_counter() - start
    rate = images / max(seconds, 1e-9)
    step_rate = _calr_step_images_per_s(results, plan.bench[0][0])
    ratio = None if step_rate is None else rate / step_rate
    log(f"loader: {rate:.1f} images/s ({plan.loader_workers} workers, {plan.image_size} px, weak + strong); "
        f"CALR step {step_rate} images/s; ratio {ratio} (>= {TARGETS['loader_over_calr_step']})")
    return {"images": images, "seconds": seconds, "images_per_s": rate, "workers": plan.loader_workers,
            "calr_step_images_per_s": step_rate, "loader_over_calr_step": ratio,
            "note": "source images are the synthetic world's PNGs, resized to the input size"}


def _fit_command(plan: Plan, data: Path, out: Path, torchrun: bool) -> list[str]:
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"] if torchrun \
        else [sys.executable]
    return [*prefix, "-m", "train", "fit", "--data", str(data), "--out", str(out), "--loss", "calr",
            "--arch", plan.fit_arch, "--no-pretrained", "--epochs", str(plan.epochs), "--batch-size",
            str(plan.batch_size), "--image-size", str(plan.image_size), "--warmup-epochs", "1", "--device",
            plan.device, "--workers", str(plan.workers), "--seed", "0"]


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun's workers leave its process group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, stack = [pid], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            tree.append(child)
            stack.append(child)
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _killed_and_resumed(plan: Plan, work: Path, torchrun: bool) -> dict[str, Any]:
    """Start a run, SIGKILL it (with its workers) once epoch 1 is saved, resume it, evaluate it."""
    data = _world(plan, work)
    out = work / ("fit_torchrun" if torchrun else "fit")
    command = _fit_command(plan, data, out, torchrun)
    if plan.fit_arch_options:
        # the compact backbone's width (smoke) has no flag: a recipe file carries it
        recipe = work / f"{out.name}.yaml"
        recipe.write_text(json.dumps({"arch_options": plan.fit_arch_options}))
        command += ["--config", str(recipe)]
    log("$ " + " ".join(command))
    start = time.perf_counter()
    process = subprocess.Popen(command, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    while not (out / "metrics.csv").exists() and process.poll() is None:
        time.sleep(0.005)
    killed = process.poll() is None
    if killed:
        _kill_tree(process.pid)
    _, first_stderr = process.communicate()
    first_seconds = time.perf_counter() - start
    if not killed and process.returncode != 0:
        raise RuntimeError(f"the first run failed ({process.returncode}): {first_stderr[-3000:]}")
    with (out / "metrics.csv").open() as handle:
        epochs_before = len(list(csv.DictReader(handle)))
    start = time.perf_counter()
    resumed = _run(command, timeout=plan.budget_s)
    if resumed.returncode != 0:
        raise RuntimeError(f"the resumed run failed ({resumed.returncode})")
    resume_seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    evaluated = _run([sys.executable, "-m", "train", "evaluate", "--checkpoint", str(out / "best"), "--data",
                      str(data), "--split", "test", "--json", "--device", plan.device, "--workers",
                      str(plan.workers), "--batch-size", str(plan.batch_size)], timeout=plan.budget_s)
    if evaluated.returncode != 0:
        raise RuntimeError(f"train evaluate failed ({evaluated.returncode})")
    evaluate_map = json.loads(evaluated.stdout.strip().splitlines()[-1])["map"]
    result = {"killed_after_epoch_1": killed, "epochs_saved_before_kill": epochs_before,
              "resumed": f"resuming {out} after epoch {epochs_before}" in resumed.stderr,
              "first_run_seconds": first_seconds, "resume_seconds": resume_seconds,
              "epochs": len(rows), "images_per_s_per_epoch": [float(row["images_per_s"]) for row in rows],
              "val_map_per_epoch": [float(row["val_map"]) for row in rows], "test_map": summary["test_map"],
              "evaluate_test_map": evaluate_map,
              "evaluate_matches_summary": abs(evaluate_map - summary["test_map"]) < 1e-3}
    log(f"{out.name}: killed {killed} after {epochs_before} epoch(s), resumed {result['resumed']}, test mAP "
        f"{summary['test_map']:.2f}, evaluate {evaluate_map:.2f}, images/s {result['images_per_s_per_epoch']}")
    return result


def fit(plan: Plan, work: Path, results: dict[str, Any]) -> dict[str, Any]:
    return _killed_and_resumed(plan, work, torchrun=False)


def fit_torchrun(plan: Plan, work: Path, results: dict[str, Any]) -> dict[str, Any]:
    result = _killed_and_resumed(plan, work, torchrun=True)
    # One process starts no process group (spml.runtime.init_distributed): NCCL needs two GPUs.
    result["note"] = "torchrun with one process: its environment and device choice, no NCCL collective"
    return result


def _loaded(plan: Plan, arch: str, options: dict[str, Any], classes: list[str]):
    from spml.checkpoint import LoadedModel
    from spml.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from spml.model import create_model
    from spml.rejection import RunningThresholds

    device = torch.device(plan.device)
    torch.manual_seed(0)
    network = create_model(arch, len(classes), pretrained=False, **options).eval().to(device)
    return LoadedModel(network, classes, plan.image_size, IMAGENET_MEAN, IMAGENET_STD,
                       thresholds=RunningThresholds(len(classes), device=device), source=f"{arch}, random weights")


def audit(plan: Plan, work: Path, results: dict[str, Any]) -> dict[str, Any]:
    from spml.commands.bench_audit import time_model
    from spml.data import make_synthetic_dataset

    root = make_synthetic_dataset(work / "audit_world", seed=1, train=1, val=0, test=plan.audit_images,
                                  image_size=plan.world["image_size"], progress=False)
    classes = (root / "classes.txt").read_text().split("\n")
    model = _loaded(plan, plan.fit_arch, plan.fit_arch_options, [name for name in classes if name])
    (work / "audit_out").mkdir(exist_ok=True)
    result = time_model(model, root, "test", plan.batch_size, plan.workers, plan.audit_repeats, work / "audit_out")
    log(f"audit: {result['audit_images_per_second']:.1f} images/s against plain inference "
        f"{result['plain_images_per_second']:.1f} (ratio {result['ratio']:.3f}, 0.5 ideal)")
    return result


def analyze(plan: Plan, work: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Latency of one ``spml.analyze`` (both passes, CAM, mask, crop, gaps) on the device, without the UI."""
    from spml.data.synthetic import render_scene
    from spml.inspect import analyze as analyze_image

    model = _loaded(plan, plan.fit_arch, plan.fit_arch_options, [f"class{i}" for i in range(20)])
    picture, _, _ = render_scene(0, "test", 0, plan.image_size)
    times = []
    for index in range(plan.analyze_rounds + 2):  # two warm-up rounds
        if plan.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        analyze_image(model, picture)
        if plan.device == "cuda":
            torch.cuda.synchronize()
        if index >= 2:
            times.append(time.perf_counter() - start)
    median = statistics.median(times) * 1000
    log(f"analyze: {median:.1f} ms median over {len(times)} rounds ({plan.fit_arch} at {plan.image_size} px)")
    return {"median_ms": median, "min_ms": min(times) * 1000, "rounds": len(times), "arch": plan.fit_arch,
            "image_size": plan.image_size}


def tests(plan: Plan, work: Path, results: dict[str, Any], budget_s: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plan.tests]
    try:
        result = _run(command, timeout=max(budget_s, 30.0))
        output, code, timed_out = result.stdout + result.stderr, result.returncode, False
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        code, timed_out = None, True
    counts = {name: int(number) for number, name in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", output)}
    if timed_out:  # no summary line: count the progress characters of the tests that did finish
        progress = "".join(re.findall(r"^([.FsExX]+)\s*(?:\[\s*\d+%\])?$", output, flags=re.MULTILINE))
        counts = {"passed": progress.count("."),
                  "failed": progress.count("F"), "skipped": progress.count("s"), "error": progress.count("E")}
    return {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0), "skipped": counts.get("skipped", 0),
            "errors": counts.get("error", 0) + counts.get("errors", 0), "returncode": code, "timed_out": timed_out,
            "cuda_cases": torch.cuda.is_available()}


# ----------------------------------------------------------------------------- driver


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
