"""The sections of the GPU check: each takes the plan, a scratch folder and the figures so far, and
returns its own figures."""

from __future__ import annotations

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
import time
from pathlib import Path
from typing import Any

import torch

from train.gpu_check.plan import TARGETS, Plan

ROOT = Path(__file__).resolve().parents[2]


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
