"""``python -m train {prepare,fit,evaluate,bench,bench-method,bench-photos,push}``: the training side of the project."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from spml.model import ARCHITECTURES
from spml.runtime import print_line
from train.prepare import add_prepare_arguments, run_prepare


def _add_fit(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fit", help="train a model (also under torchrun for several GPUs)")
    parser.add_argument("--config", help="a recipe YAML (train/configs/); flags given here override it")
    parser.add_argument("--data", help="prepared data set folder (classes.txt, train.csv, ...)")
    parser.add_argument("--loss", help="full, an, an-ls, wan, epr, role, ll-r, ll-ct, ll-cp or calr")
    parser.add_argument("--arch", help=f"one of {', '.join(ARCHITECTURES)}")
    parser.add_argument("--out", help="run directory; an interrupted run resumes from it")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--resize", help="how an image becomes the square input: stretch (the paper's) or letterbox "
                        "(fit whole on grey); the checkpoint carries it to the app and the audit")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup-epochs", type=int, help="CALR epochs before rejection starts")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="start from ImageNet weights")
    parser.add_argument("--init-from", help="start from this checkpoint's weights (and CALR's running thresholds)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bfloat16 autocast (default: on for CUDA)")
    parser.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                        help="TensorBoard event files in the run folder (default on): tensorboard --logdir runs")
    parser.add_argument("--no-export", action="store_true",
                        help="leave the recipe's export folder (a committed checkpoint, say) as it is")
    parser.add_argument("--device", help="auto, cpu or cuda")
    parser.add_argument("--workers", type=int, help="data loader processes")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap steps per epoch (smoke runs)")
    parser.add_argument("--skip-bad", action="store_true", default=None,
                        help="skip bad rows and unreadable images (counted in the log) instead of stopping")
    parser.add_argument("--folds", type=int, help="cross-fitting: train K models, each without one fold of the "
                        "training split (RUN/folds.json, RUN/fold-<f>/), for an out-of-sample `spml audit`")
    parser.add_argument("--expected-positives", type=float,
                        help="labels per image, annotated or not: EPR and ROLE's target, and what CALR's probes need "
                             "to estimate the rule's precision on a set with several annotated positives")
    parser.add_argument("--single-positive", action="store_true", default=None,
                        help="draw one positive per row from labels by the protocol (for files without a positive "
                             "column); by default every class in labels is observed")
    parser.set_defaults(func=_run_fit)


def _run_fit(args: argparse.Namespace) -> int:
    from train.config import load_config
    from train.engine import export_run, fit

    overrides = {key: getattr(args, key) for key in (
        "data", "loss", "arch", "out", "epochs", "batch_size", "image_size", "resize", "lr", "warmup_epochs",
        "pretrained", "amp", "device", "workers", "seed", "max_steps_per_epoch", "skip_bad", "single_positive",
        "expected_positives", "tensorboard", "init_from")}
    config = load_config(args.config, overrides)
    if args.no_export:
        config.export = None
    if config.synthetic is not None and not (Path(config.data) / "classes.txt").is_file():
        from spml.data import make_synthetic_dataset

        logging.getLogger("train").info("making the synthetic world at %s", config.data)
        make_synthetic_dataset(config.data, **config.synthetic)
    if args.folds is not None:
        from train.folds import fit_folds

        print_line(json.dumps(fit_folds(config, args.folds)))  # one line per rank under torchrun
        return 0
    summary = fit(config)
    if config.export:
        export_run(Path(config.out), Path(config.export), half=config.export_half)
    print_line(json.dumps(summary))
    return 0


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="clean-label mAP of a checkpoint on a split")
    parser.add_argument("--checkpoint", required=True, help="directory or hf://OWNER/NAME[@REV]")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from spml.checkpoint import load_model
    from spml.data import load_dataset
    from spml.runtime import resolve_device
    from train.config import TrainConfig
    from train.loop import evaluate

    device = resolve_device(args.device)
    model = load_model(args.checkpoint, device=device)
    dataset = load_dataset(args.data)
    if dataset.classes != model.classes:
        raise ValueError(f"the data set's classes ({len(dataset.classes)}) differ from the checkpoint's "
                         f"({len(model.classes)}); evaluate on the data set the model was trained for")
    config = TrainConfig(data=args.data, out="-", image_size=model.image_size, resize=model.resize,
                         batch_size=args.batch_size,
                         workers=args.workers, amp=device.type == "cuda", channels_last=False)
    split = dataset.split(args.split)
    value = evaluate(model.network, split, config, device)
    result = {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
              "images": len(split.images), "map": value}
    print(json.dumps(result) if args.json else f"{args.split} mAP {value:.2f} on {len(split.images)} images")
    return 0


def _add_push(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("push", help="upload a checkpoint to the Hugging Face Hub with a model card")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--repo", required=True, help="OWNER/NAME on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--folder", help="write what would be uploaded to this folder and upload nothing")
    parser.set_defaults(func=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from train.push import push

    print(push(args.checkpoint, args.repo, private=args.private, folder=args.folder))
    return 0


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    from train.bench import add_bench_arguments

    parser = subparsers.add_parser("bench", help="time one training step of AN, CALR and reference-style CALR")
    add_bench_arguments(parser)


def _add_bench_cleanlab(subparsers: argparse._SubParsersAction) -> None:
    from train.bench_cleanlab import add_bench_cleanlab_arguments, run_bench_cleanlab

    parser = subparsers.add_parser("bench-cleanlab", help="the audit against cleanlab's multi-label functions, "
                                   "in-sample and cross-fitted, on small synthetic worlds (a benchmark)")
    add_bench_cleanlab_arguments(parser)
    parser.set_defaults(func=run_bench_cleanlab)


def _add_bench_method(subparsers: argparse._SubParsersAction) -> None:
    from train.bench_method.runner import add_bench_method_arguments

    parser = subparsers.add_parser("bench-method", help="test mAP of full, AN, LL-R and CALR on synthetic worlds")
    add_bench_method_arguments(parser)


def _add_bench_photos(subparsers: argparse._SubParsersAction) -> None:
    from train.bench_photos import add_bench_photos_arguments

    parser = subparsers.add_parser("bench-photos", help="photos models' scene mAP and photo top-1 against a "
                                   "logistic regression on ImageNet features (a benchmark)")
    add_bench_photos_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_prepare_arguments(subparsers).set_defaults(func=run_prepare)
    _add_fit(subparsers)
    _add_evaluate(subparsers)
    _add_push(subparsers)
    _add_bench(subparsers)
    _add_bench_cleanlab(subparsers)
    _add_bench_method(subparsers)
    _add_bench_photos(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
