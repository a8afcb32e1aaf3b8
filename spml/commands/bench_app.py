"""``python -m spml bench-app``: what one Inspect analysis costs, in plain forward passes and against GradCAM.

For each model (ResNet-50 at 448 px with random weights, which time the same as trained ones, and the
demo checkpoint when present) it times, on the same S x S image:

- ``forward``: one plain eager forward pass, ``network(x)`` under ``torch.inference_mode``;
- ``forward_optimized``: the same after ``optimize_for_inference`` (BatchNorm folded, channels-last);
- ``analysis``: everything the Inspect view shows (``analyze`` on the decoded image, then the display
  formatting), with the optimised network, as the app runs it; ``analysis_eager`` with the eager one;
- ``gradcam``: pytorch-grad-cam's GradCAM for the same class on the eager model (``pip install grad-cam``).

Rounds interleave the measurements, so load from other processes hits all of them alike. Each figure
is given as the median over the rounds after warm-up and as the minimum (the least disturbed run, the
better estimate of the code's own cost on a shared machine); ratios are given for both.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spml.checkpoint import LoadedModel, load_model
from spml.data.synthetic import render_scene
from spml.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from spml.inference import optimize_for_inference
from spml.inspect import analyze
from spml.model import create_model

TARGET_FORWARDS = 1.9  # the analysis may cost at most this many plain forward passes
TARGET_GRADCAM_SPEEDUP = 1.3  # and must be at least this much faster than GradCAM alone


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench-app", help="time one Inspect analysis against a forward pass and GradCAM")
    parser.add_argument("--checkpoint", default="checkpoints/demo",
                        help="also time this checkpoint when it exists (default: checkpoints/demo)")
    parser.add_argument("--arch", default="resnet50",
                        help="architecture timed at --image-size (default resnet50; none: only the checkpoint)")
    parser.add_argument("--image-size", type=int, default=448, help="input side for --arch (default 448)")
    parser.add_argument("--classes", type=int, default=20, help="classes of the --arch model (default 20, VOC)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds after warm-up (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: this thread's CPU time (time.thread_time), which time spent "
                             "descheduled on a busy machine does not inflate; use it with --threads 1")
    parser.add_argument("--no-gradcam", action="store_true", help="skip GradCAM (when grad-cam is not installed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


class _Logits(nn.Module):
    """GradCAM wants a module that returns the logits tensor."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images).logits


def _gradcam(model: LoadedModel, inputs: torch.Tensor, target: int) -> Callable[[], Any]:
    """One GradCAM call on its own copy of the eager network (its hooks must not slow the others)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    network = copy.deepcopy(model.network).eval()
    cam = GradCAM(model=_Logits(network), target_layers=[network.backbone[-1]])
    targets = [ClassifierOutputTarget(target)]
    return lambda: cam(input_tensor=inputs, targets=targets)


def bench_model(name: str, model: LoadedModel, rounds: int, warmup: int, gradcam: bool,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    from spml.app.inspect import format_analysis

    size = model.image_size
    picture, _, _ = render_scene(0, "test", 0, size)  # an S x S image: the app's resize is then a no-op
    inputs = model.input_transform()(picture)[None]
    optimized = copy.copy(model)
    optimized.network = optimize_for_inference(copy.deepcopy(model.network))
    with torch.inference_mode():
        top = int(model.network(inputs).logits[0].argmax())
        drift = float((model.network(inputs).logits - optimized.network(inputs).logits).abs().max())

    def forward(network: nn.Module) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode():
                return network(inputs)
        return call

    measures: dict[str, Callable[[], Any]] = {
        "forward": forward(model.network),
        "forward_optimized": forward(optimized.network),
        "analysis": lambda: format_analysis(analyze(optimized, picture), optimized),
        "analysis_eager": lambda: format_analysis(analyze(model, picture), model),
    }
    if gradcam:
        measures["gradcam"] = _gradcam(model, inputs, top)
    times: dict[str, list[float]] = {key: [] for key in measures}
    for round_index in range(warmup + rounds):
        for key, call in measures.items():
            start = clock()
            call()
            if round_index >= warmup:
                times[key].append(clock() - start)
    result: dict[str, Any] = {"model": name, "image_size": size, "max_logit_drift": drift, "rounds": rounds,
                              "threads": torch.get_num_threads()}
    for stat, reduce in (("median", statistics.median), ("min", min)):
        ms = {key: 1000.0 * reduce(values) for key, values in times.items()}
        ratios = {
            "analysis_per_forward": ms["analysis"] / ms["forward"],
            "analysis_per_optimized_forward": ms["analysis"] / ms["forward_optimized"],
            "analysis_eager_per_forward": ms["analysis_eager"] / ms["forward"],
        }
        if gradcam:
            ratios["gradcam_per_forward"] = ms["gradcam"] / ms["forward"]
            ratios["gradcam_per_analysis"] = ms["gradcam"] / ms["analysis"]
        result[stat] = {"ms": ms, "ratios": ratios}
    return result


def _verdict(ratios: dict[str, float]) -> str:
    parts = [f"analysis {ratios['analysis_per_forward']:.2f} forwards "
             f"({'meets' if ratios['analysis_per_forward'] <= TARGET_FORWARDS else 'misses'} <= {TARGET_FORWARDS})"]
    if "gradcam_per_analysis" in ratios:
        speedup = ratios["gradcam_per_analysis"]
        parts.append(f"{speedup:.2f}x faster than GradCAM "
                     f"({'meets' if speedup >= TARGET_GRADCAM_SPEEDUP else 'misses'} >= {TARGET_GRADCAM_SPEEDUP})")
    return "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        print("--clock cpu counts this thread only: pass --threads 1")
        return 2
    gradcam = not args.no_gradcam
    if gradcam:
        try:
            import pytorch_grad_cam  # noqa: F401
        except ImportError:
            print("pytorch-grad-cam is not installed: `pip install grad-cam` (benchmark only), or pass --no-gradcam")
            return 2
    models = []
    if args.arch != "none":
        torch.manual_seed(0)
        network = create_model(args.arch, args.classes, pretrained=False).eval()
        models.append((f"{args.arch}@{args.image_size}",
                       LoadedModel(network=network, classes=[f"class{i}" for i in range(args.classes)],
                                   image_size=args.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)))
    if args.checkpoint and Path(args.checkpoint).is_dir():
        models.append((args.checkpoint, load_model(args.checkpoint)))
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    results = [bench_model(name, model, args.rounds, args.warmup, gradcam, clock) for name, model in models]
    if args.json:
        print(json.dumps({"results": results}, indent=2))
        return 0
    for result in results:
        median, best = result["median"], result["min"]
        print(f"{result['model']} at {result['image_size']} px, {args.clock} clock, {result['threads']} threads, "
              f"{result['rounds']} "
              f"rounds (max logit drift of the optimisation {result['max_logit_drift']:.1e}):")
        print(f"  {'':<18} {'median ms':>10} {'min ms':>10}   in eager forwards (median / min)")
        for key, value in median["ms"].items():
            print(f"  {key:<18} {value:10.1f} {best['ms'][key]:10.1f}   "
                  f"{value / median['ms']['forward']:.2f} / {best['ms'][key] / best['ms']['forward']:.2f}")
        for stat, figures in (("median", median), ("min", best)):
            print(f"  {stat}: {_verdict(figures['ratios'])}; analysis / optimized forward "
                  f"{figures['ratios']['analysis_per_optimized_forward']:.2f}")
    return 0
