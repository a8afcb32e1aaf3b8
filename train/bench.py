"""``python -m train bench``: the cost of one training step of AN, our CALR and a reference-style CALR.

Reference-style means what the public CALR code does: the masked pass keeps autograd on and lets
BatchNorm fold the masked batch into its running statistics, and on the ResNet path every model call
runs the backbone twice (once for the logits, once more for the CAM features). Its Q2L path takes
the CAM from the same forward pass, so there the model runs once per call.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any

import torch
from torch import Tensor, nn

from spml.losses import CALR, AssumeNegative, Objective
from spml.model import ModelOutput, SPMLModel, create_model
from spml.runtime import resolve_device
from train.loop import to_device


class ReferenceStyleModel(SPMLModel):
    """Runs the wrapped model twice per call: logits from the first pass, CAM state from the second."""

    def __init__(self, inner: SPMLModel):
        super().__init__()
        self.inner = inner
        self.arch, self.num_classes = inner.arch, inner.num_classes

    def forward(self, images: Tensor) -> ModelOutput:
        first = self.inner(images)
        second = self.inner(images)
        return ModelOutput(logits=first.logits, features=second.features, attention=second.attention)

    def class_maps(self, output: ModelOutput, classes: Tensor | None = None, bias: bool = True) -> Tensor:
        return self.inner.class_maps(output, classes, bias)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model: nn.Module, objective: Objective, batch: dict[str, Tensor], steps: int, warmup: int,
               device: torch.device, amp: bool) -> list[float]:
    """Seconds of each timed step: forward passes, backward, optimiser step (after ``warmup`` untimed).
    On CUDA the peak memory counter is reset first, so it reads this variant's peak afterwards."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for index in range(warmup + steps):
        _synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            result = objective.step(model, batch, epoch=10)  # past warm-up: the rejection path runs
        optimizer.zero_grad(set_to_none=True)
        result.loss.float().backward()
        optimizer.step()
        _synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def run_bench(arch: str = "resnet50", image_size: int | None = None, batch_size: int | None = None,
              num_classes: int = 20, steps: int = 6, warmup: int = 2, device: str = "auto",
              amp: bool | None = None, arch_options: dict[str, Any] | None = None) -> dict[str, Any]:
    resolved = resolve_device(device)
    on_cuda = resolved.type == "cuda"
    image_size = image_size or (448 if on_cuda else 224)
    batch_size = batch_size or (16 if on_cuda else 4)
    amp = on_cuda if amp is None else amp
    torch.manual_seed(0)
    base = create_model(arch, num_classes, pretrained=False, **(arch_options or {}))
    generator = torch.Generator().manual_seed(0)
    observed = torch.zeros(batch_size, num_classes, dtype=torch.int8)
    observed[torch.arange(batch_size), torch.randint(num_classes, (batch_size,), generator=generator)] = 1
    batch = {"image": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
             "strong": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
             "observed": observed, "labels": observed.float(), "index": torch.arange(batch_size)}
    # The same images with a second annotated positive each: every image is probed (the probes' worst case).
    several = observed.clone()
    several[torch.arange(batch_size), (observed.argmax(dim=1) + 1) % num_classes] = 1
    batches = {"single": to_device(batch, resolved, channels_last=on_cuda),  # channels-last on CUDA, as trained
               "several": to_device({**batch, "observed": several, "labels": several.float()}, resolved,
                                    channels_last=on_cuda)}
    variants = {
        "an": (lambda m: m, AssumeNegative(), "single"),
        "calr": (lambda m: m, CALR(num_classes), "single"),
        "reference": (ReferenceStyleModel if arch != "q2l" else (lambda m: m), CALR(num_classes, reference=True),
                      "single"),
        "calr_several": (lambda m: m, CALR(num_classes), "several"),
        "calr_probes": (lambda m: m, CALR(num_classes, probes=True), "several"),
    }
    medians: dict[str, float] = {}
    peaks: dict[str, float | None] = {}
    for name, (wrap, objective, batch_name) in variants.items():
        model = wrap(copy.deepcopy(base)).to(resolved)  # every variant starts from the same weights
        if on_cuda:
            model = model.to(memory_format=torch.channels_last)
        times = time_steps(model, objective.to(resolved), batches[batch_name], steps, warmup, resolved, amp)
        medians[name] = statistics.median(times)
        peaks[name] = torch.cuda.max_memory_allocated(resolved) / 2**20 if on_cuda else None
        del model
    return {
        **{f"{name}_step_s": medians[name] for name in variants},
        **{f"{name}_images_per_s": batch_size / medians[name] for name in variants},
        # peak memory needs CUDA's allocator statistics: None on the CPU
        **{f"{name}_peak_mib": peaks[name] for name in variants},
        "calr_peak_over_an": None if peaks["an"] is None else peaks["calr"] / peaks["an"],
        "calr_over_an": medians["calr"] / medians["an"],
        "reference_over_calr": medians["reference"] / medians["calr"],
        "probes_over_calr": medians["calr_probes"] / medians["calr_several"],
        "device": torch.cuda.get_device_name(resolved) if on_cuda else f"cpu ({torch.get_num_threads()} threads)",
        "arch": arch, "batch_size": batch_size, "image_size": image_size, "num_classes": num_classes,
        "steps": steps, "warmup": warmup, "amp": amp, "torch": torch.__version__,
    }


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="resnet50", help="any architecture, q2l included")
    parser.add_argument("--arch-options", type=json.loads, default=None,
                        help='JSON options of the architecture, e.g. \'{"hidden_dim": 512}\' for q2l')
    parser.add_argument("--image-size", type=int, help="default 224 on the CPU, 448 on CUDA")
    parser.add_argument("--batch-size", type=int, help="default 4 on the CPU, 16 on CUDA")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    result = run_bench(args.arch, args.image_size, args.batch_size, args.num_classes, args.steps, args.warmup,
                       args.device, args.amp, args.arch_options)
    print(f"{result['arch']} at {result['image_size']} px, batch {result['batch_size']}, {result['device']}:")
    for name in ("an", "calr", "reference", "calr_several", "calr_probes"):
        print(f"  {name:<13} {result[name + '_step_s'] * 1000:9.1f} ms/step")
    print(f"  CALR / AN            {result['calr_over_an']:.2f}  (target <= 2.4)")
    print(f"  reference / CALR     {result['reference_over_calr']:.2f}  (target >= 1.4)")
    print(f"  CALR with probes / without, two positives an image  {result['probes_over_calr']:.2f}")
    if result["calr_peak_over_an"] is not None:
        print(f"  peak memory CALR / AN {result['calr_peak_over_an']:.2f}  (target <= 1.5; "
              f"{result['an_peak_mib']:.0f} / {result['calr_peak_mib']:.0f} / {result['reference_peak_mib']:.0f} MiB)")
    if args.json:
        print(json.dumps(result))
    return 0
