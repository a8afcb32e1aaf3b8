"""``python -m spml bench-audit``: audit throughput against plain batched inference.

Both sides run the same model on the same images with the same batch size and the same loader
(decode, resize, normalise): plain inference is one forward pass per batch; the audit is the whole
``audit_dataset`` call (two passes, CAM masks, the rule, the rows, the final sort and the summary).
Two passes per image make 0.5 the ideal ratio. One warm-up of each, then timed repeats alternating
the two; the fastest of each is reported (on a shared machine the other loads only ever slow a run
down, so the minimum is the least disturbed measurement). Models: the given checkpoint at its own input size, and
ResNet-50 at 448 with random weights (timing does not depend on the weights; no download needed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from spml.audit import audit_dataset
from spml.checkpoint import LoadedModel, load_model
from spml.data.dataset import ImageDataset
from spml.data.generic import load_dataset
from spml.data.synthetic import make_synthetic_dataset
from spml.model import create_model
from spml.rejection import RunningThresholds


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench-audit", help="audit images/s against plain batched inference")
    parser.add_argument("--checkpoint", default="checkpoints/demo", help="directory or hf://OWNER/NAME[@REV]")
    parser.add_argument("--data", default=None, help="data set folder to time on, its whole --split "
                        "(default: fresh synthetic images, --images and --resnet-images of them)")
    parser.add_argument("--split", default="test", help="split of --data to time on")
    parser.add_argument("--images", type=int, default=256, help="synthetic images per timing of the checkpoint")
    parser.add_argument("--resnet-images", type=int, default=16, help="synthetic images per timing of ResNet-50")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repeats of each side, after one warm-up (the fastest counts)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 gives steadier figures on a shared machine")
    parser.add_argument("--device", default="cpu", help="cpu (the figures the issue asks for), cuda, cuda:N")
    parser.add_argument("--no-resnet", action="store_true", help="time the checkpoint only")
    parser.set_defaults(func=run)


@torch.inference_mode()
def plain_inference(model: LoadedModel, root: Path, split: str, batch_size: int, workers: int) -> int:
    """Probabilities of every image of the split, batched: the baseline the audit is compared with."""
    images = ImageDataset(load_dataset(root).split(split), model.input_transform())
    count = 0
    for batch in DataLoader(images, batch_size=batch_size, num_workers=workers):
        torch.sigmoid(model.network(batch["image"].to(model.device)).logits).cpu()
        count += len(batch["image"])
    return count


def time_model(model: LoadedModel, root: Path, split: str, batch_size: int, workers: int, repeats: int,
               work: Path) -> dict[str, Any]:
    """Images/s of plain inference and of the audit on ``split`` of ``root``, and their ratio."""
    plain_times: list[float] = []
    audit_times: list[float] = []
    images = 0
    for repeat in range(repeats + 1):  # the first round warms up (allocator, kernels, file cache)
        start = time.perf_counter()
        images = plain_inference(model, root, split, batch_size, workers)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        audit_dataset(model, root, split, work / "audit.csv", batch_size=batch_size, workers=workers,
                      resume=False, show_progress_bar=False)
        audited = time.perf_counter() - start
        if repeat:
            plain_times.append(plain)
            audit_times.append(audited)
    plain_rate = images / min(plain_times)
    audit_rate = images / min(audit_times)
    return {"model": model.source, "image_size": model.image_size, "batch_size": batch_size, "images": images,
            "plain_images_per_second": plain_rate, "audit_images_per_second": audit_rate,
            "ratio": audit_rate / plain_rate}


def run(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model(args.checkpoint, device=device)
    results = []
    with tempfile.TemporaryDirectory(prefix="spml-bench-audit-") as tmp:
        work = Path(tmp)

        def images_for(count: int) -> tuple[Path, str]:
            if args.data is not None:
                return Path(args.data), args.split
            root = make_synthetic_dataset(work / f"synthetic-{count}", seed=0, train=1, val=0, test=count,
                                          progress=False)
            return root, "test"

        subjects = [(f"checkpoint {args.checkpoint}", model, args.images)]
        if not args.no_resnet:
            classes = model.classes
            network = create_model("resnet50", len(classes), pretrained=False).eval().to(device)
            resnet = LoadedModel(network, classes, 448, model.mean, model.std,
                                 thresholds=RunningThresholds(len(classes), device=device),
                                 source="resnet50, random weights")
            subjects.append(("resnet50@448", resnet, args.resnet_images))
        for name, subject, count in subjects:
            root, split = images_for(count)
            result = time_model(subject, root, split, args.batch_size, args.workers, args.repeats, work)
            result["model"] = name
            results.append(result)
            print(f"{name}: plain {result['plain_images_per_second']:.2f} img/s, audit "
                  f"{result['audit_images_per_second']:.2f} img/s, ratio {result['ratio']:.3f} "
                  f"({result['images']} images, batch {result['batch_size']}, {args.repeats} repeats)", flush=True)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    print(json.dumps({"results": results, "machine": machine}))
    return 0
