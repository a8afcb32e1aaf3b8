"""``python -m spml audit`` (rank a data set's likely missing labels) and ``python -m spml review-export``
(write the data set CSV corrected by the review's decisions)."""

from __future__ import annotations

import argparse
import json
import os

from spml.audit import audit_dataset, export_corrected_dataset, load_audit_model, load_decisions
from spml.data.generic import load_dataset
from spml.runtime import resolve_device


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser("audit", help="rank the likely missing labels of a data set split",
                                  description="Also runs under torchrun --nproc_per_node=N (one shard per rank).")
    audit.add_argument("--checkpoint", default="checkpoints/demo",
                       help="directory or hf://OWNER/NAME[@REV], or the run directory of `train fit --folds K` "
                            "(each image scored by the model that never trained on it)")
    audit.add_argument("--data", required=True, help="data set folder (classes.txt, train.csv, ...)")
    audit.add_argument("--split", default="train", help="split to audit (default: train)")
    audit.add_argument("--out", default="audit.csv", help="report CSV; the summary goes beside it as .json")
    audit.add_argument("--top", type=int, default=None, help="write only the K best-ranked suspects")
    audit.add_argument("--batch-size", type=int, default=32)
    audit.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    audit.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto: cuda:LOCAL_RANK if any)")
    audit.add_argument("--single-positive", action="store_true",
                       help="draw one annotated positive per row from labels by the protocol (files without a "
                            "positive column); by default every class in labels is annotated")
    audit.add_argument("--no-resume", action="store_true", help="start over instead of continuing a killed audit")
    audit.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    audit.set_defaults(func=run_audit)

    export = subparsers.add_parser("review-export", help="write the data set CSV with the review's decisions",
                                   description="Decisions come from the report's decision store "
                                               "(REPORT.decisions.json) and its hand-filled decision column.")
    export.add_argument("--report", required=True, help="the audit report CSV")
    export.add_argument("--data", required=True, help="the audited data set folder")
    export.add_argument("--split", default="train", help="the audited split")
    export.add_argument("--out", required=True, help="the corrected CSV to write")
    export.set_defaults(func=run_export)


def run_audit(args: argparse.Namespace) -> int:
    model = load_audit_model(args.checkpoint, device=resolve_device(args.device))
    report = audit_dataset(model, args.data, args.split, args.out, batch_size=args.batch_size, top=args.top,
                           workers=args.workers, resume=not args.no_resume, single_positive=args.single_positive)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    summary = report.summary
    print(f"audited {report.images} images of {args.split}: {report.candidates} candidates, "
          f"{summary['rows_written']} rows in {report.csv_path}, summary in {report.json_path}")
    if report.skipped:
        print(f"skipped {report.skipped} bad rows or images:")
        for message in report.skipped_messages:
            print(f"  {message}")
    evaluation = summary["evaluation"]
    if evaluation:
        print(f"hidden positives: {evaluation['hidden_positives']}")
        for name, ranking in evaluation["rankings"].items():
            overall = ranking["overall"]
            auroc = float("nan") if overall["auroc"] is None else overall["auroc"]
            print(f"  {name:12s} AP {overall['average_precision']:.4f}  AUROC {auroc:.4f}  "
                  f"P@100 {overall['precision_at_100']:.3f}  R@100 {overall['recall_at_100']:.3f}  "
                  f"P@hidden {overall['precision_at_hidden']:.3f}")
        where = evaluation.get("where")
        if where and where["share"] is not None:
            print(f"where: of the {where['with_drawn_box']} hidden labels in the top {where['top']}, "
                  f"{where['centre_inside']} ({where['share']:.1%}) have a drawn box of their class whose centre "
                  "lies in the suspect box")
    if args.json:
        print(json.dumps(summary))
    return 0


def run_export(args: argparse.Namespace) -> int:
    split = load_dataset(args.data, skip_bad=True).split(args.split)
    result = export_corrected_dataset(args.data, split.source.name, load_decisions(args.report), args.out)
    print(f"wrote {result['out']}: {result['confirmed']} labels confirmed, {result['dismissed']} dismissed")
    for problem in result["problems"]:
        print(f"  not applied: {problem}")
    return 0
