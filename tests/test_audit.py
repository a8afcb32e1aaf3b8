"""The data set audit: evaluation metrics, score, report, resume, sharding, bad data, command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_spread_model
from report_checks import assert_same_report, read_rows

from spml.audit import REPORT_COLUMNS, audit_dataset, batch_evidence, candidate_values, missing_label_score
from spml.audit.report import PART_COLUMNS, merge_report
from spml.audit.scoring import format_box, parse_box
from spml.audit.where import holds_centre, read_boxes
from spml.checkpoint import LoadedModel, load_model, save_checkpoint
from spml.data import SYNTHETIC_CLASSES, load_dataset, make_synthetic_dataset
from spml.metrics import StreamingRanking, average_precision, precision_recall_at_k, roc_auc
from spml.model import LinearCAMModel
from spml.runtime import free_local_port

REPO = Path(__file__).resolve().parents[1]


def tiny_model(image_size: int = 32) -> LoadedModel:
    return make_spread_model(image_size, gap_threshold=0.05, class_average=-1.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """12 test images at 32 px with full labels (single positives drawn by the protocol)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("audit") / "world", seed=3, train=4, val=0, test=12,
                                  image_size=32, progress=False)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return tiny_model()


@pytest.fixture(scope="module")
def reference(world, model, tmp_path_factory) -> Path:
    """An uninterrupted single-process audit, batch size 5, to compare the other runs with."""
    out = tmp_path_factory.mktemp("reference") / "audit.csv"
    audit_dataset(model, world, "test", out, batch_size=5, show_progress_bar=False)
    return out


# --- evaluation metrics ------------------------------------------------------------------------

HAND_SCORES = np.array([0.9, 0.8, 0.8, 0.4, 0.3])
HAND_TARGETS = np.array([1, 0, 1, 0, 1])
# AP: precision after each tie group holding positives: 1/1 (0.9), 2/3 (0.8 pair), 3/5 (0.3) -> mean.
HAND_AP = (1 + 2 / 3 + 3 / 5) / 3
# AUROC: positive-negative pairs ranked right: 0.9 beats both, 0.8 ties 0.8 (1/2) and beats 0.4, 0.3 none.
HAND_AUROC = (2 + 1.5 + 0) / 6


def test_ranking_metrics_on_a_hand_made_case():
    assert average_precision(HAND_SCORES, HAND_TARGETS) == pytest.approx(HAND_AP)
    assert roc_auc(HAND_SCORES, HAND_TARGETS) == pytest.approx(HAND_AUROC)
    assert precision_recall_at_k(HAND_SCORES, HAND_TARGETS, 2) == pytest.approx((1 / 2, 1 / 3))
    for cut in range(1, 5):  # a tie group split across chunks must still count as one
        ranking = StreamingRanking(ks=(2, 3, 100))
        ranking.add(HAND_SCORES[:cut], HAND_TARGETS[:cut])
        ranking.add(HAND_SCORES[cut:], HAND_TARGETS[cut:])
        result = ranking.result()
        assert result["average_precision"] == pytest.approx(HAND_AP)
        assert result["auroc"] == pytest.approx(HAND_AUROC)
        assert (result["precision_at_2"], result["recall_at_2"]) == pytest.approx((1 / 2, 1 / 3))
        assert (result["precision_at_3"], result["recall_at_3"]) == pytest.approx((2 / 3, 2 / 3))
        assert (result["precision_at_100"], result["recall_at_100"]) == pytest.approx((3 / 5, 1.0))


def test_streaming_ranking_equals_the_array_metrics_and_refuses_disorder():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        scores, targets = rng.integers(0, 5, n).astype(float), rng.integers(0, 2, n)
        order = np.argsort(-scores, kind="mergesort")
        ranking = StreamingRanking(ks=(1, 7, int(targets.sum())))
        for part in np.array_split(order, 3):
            ranking.add(scores[part], targets[part])
        result = ranking.result()
        assert result["average_precision"] == pytest.approx(average_precision(scores, targets))
        expected_auc = roc_auc(scores, targets)
        assert result["auroc"] == pytest.approx(expected_auc, nan_ok=True)
        for k in (1, 7, int(targets.sum())):
            assert (result[f"precision_at_{k}"], result[f"recall_at_{k}"]) == pytest.approx(
                precision_recall_at_k(scores, targets, k))
    ranking = StreamingRanking()
    ranking.add(np.array([0.5]), np.array([1]))
    with pytest.raises(ValueError, match="non-increasing"):
        ranking.add(np.array([0.6]), np.array([0]))


def test_report_evaluation_on_hand_made_candidates(tmp_path):
    """Five candidates of two classes: the report is sorted by score, and the audit and baseline
    metrics are those computed by hand."""
    rows = [  # image, class, score, rejected, positive, probability, logit, masked_logit, gap, truth, line,
        # suspect_box, positive_box, fold
        ("a.png", "cat", "0.9", "1", "dog", "0.9", "2.0", "0", "2", "1", "2", "1 2 3 4", "0 0 8 8", ""),
        ("b.png", "cat", "0.8", "0", "dog", "0.7", "0.8", "0", "0.8", "0", "3", "1 2 3 4", "0 0 8 8", ""),
        ("c.png", "cat", "0.8", "1", "dog", "0.6", "0.5", "0", "0.5", "1", "4", "1 2 3 4", "0 0 8 8", ""),
        ("d.png", "cow", "0.4", "0", "dog", "0.95", "3.0", "3", "0", "0", "5", "1 2 3 4", "0 0 8 8", ""),
        ("e.png", "cow", "0.3", "0", "dog", "0.2", "-1.0", "-2", "1", "1", "6", "1 2 3 4", "0 0 8 8", ""),
    ]
    assert len(rows[0]) == len(PART_COLUMNS)
    part = tmp_path / "part.csv"
    part.write_text("".join(",".join(row) + "\n" for row in rows))
    out = tmp_path / "report.csv"
    written, rejected, evaluation = merge_report([part], tmp_path / "work", out, None, True, ["cat", "cow", "dog"])
    report = read_rows(out)
    assert written == 5 and rejected == 2
    assert [row["image"] for row in report] == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert [row["rank"] for row in report] == ["1", "2", "3", "4", "5"]
    audit = evaluation["rankings"]["audit"]["overall"]
    assert audit["average_precision"] == pytest.approx(HAND_AP)
    assert audit["auroc"] == pytest.approx(HAND_AUROC)
    assert audit["hidden_positives"] == 3
    assert (audit["precision_at_hidden"], audit["recall_at_hidden"]) == pytest.approx((2 / 3, 2 / 3))
    # The baselines rank by logit: d (3.0, neg), a (2.0, pos), b (0.8, neg), c (0.5, pos), e (-1.0, pos).
    baseline_ap = (1 / 2 + 2 / 4 + 3 / 5) / 3
    for name in ("probability", "large_loss"):
        assert evaluation["rankings"][name]["overall"]["average_precision"] == pytest.approx(baseline_ap)
        assert evaluation["rankings"][name]["overall"]["auroc"] == pytest.approx(1 / 6)  # only a beats b
    cat = evaluation["rankings"]["audit"]["per_class"]["cat"]
    assert cat["average_precision"] == pytest.approx((1 + 2 / 3) / 2) and cat["hidden_positives"] == 2
    assert evaluation["rankings"]["audit"]["per_class"]["dog"]["auroc"] is None  # no candidate at all
    assert evaluation["rule"] == {"precision": 1.0, "recall": pytest.approx(2 / 3)}
    assert evaluation["where"] is None  # no drawn boxes given


def test_where_the_audit_looks_against_drawn_boxes(tmp_path):
    """Three hidden labels, so the top 3 rows count: a (hidden, its cat box centred at (2, 3) lies in the
    suspect box 1 2 3 4), b (not hidden), c (hidden, its cat box centred at (10, 10) does not). e, hidden
    but ranked 5th, is out of the top. 1 of the 2 hidden labels in the top: 50%."""
    rows = [
        ("a.png", "cat", "0.9", "1", "dog", "0.9", "2.0", "0", "2", "1", "2", "1 2 3 4", "0 0 8 8", ""),
        ("b.png", "cat", "0.8", "0", "dog", "0.7", "0.8", "0", "0.8", "0", "3", "1 2 3 4", "0 0 8 8", ""),
        ("c.png", "cat", "0.8", "1", "dog", "0.6", "0.5", "0", "0.5", "1", "4", "1 2 3 4", "0 0 8 8", ""),
        ("d.png", "cow", "0.4", "0", "dog", "0.95", "3.0", "3", "0", "0", "5", "1 2 3 4", "0 0 8 8", ""),
        ("e.png", "cow", "0.3", "0", "dog", "0.2", "-1.0", "-2", "1", "1", "6", "0 0 9 9", "0 0 8 8", ""),
    ]
    part = tmp_path / "part.csv"
    part.write_text("".join(",".join(row) + "\n" for row in rows))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "boxes.csv").write_text(
        "image,class,x0,y0,x1,y1\na.png,cat,1,2,3,4\na.png,dog,0,0,1,1\nc.png,cat,8,8,12,12\ne.png,cow,0,0,2,2\n")
    boxes = read_boxes(tmp_path / "data")
    assert boxes[("a.png", "cat")] == [(1.0, 2.0, 3.0, 4.0)]
    _, _, evaluation = merge_report([part], tmp_path / "work", tmp_path / "r.csv", None, True,
                                    ["cat", "cow", "dog"], boxes)
    assert evaluation["where"] == {"top": 3, "hidden_in_top": 2, "with_drawn_box": 2, "centre_inside": 1,
                                   "share": 0.5}
    assert holds_centre("1 2 3 4", [(0, 0, 4, 4)]) and not holds_centre("-1 -1 -1 -1", [(0, 0, 4, 4)])
    assert not holds_centre("", [(0, 0, 4, 4)])
    assert read_boxes(tmp_path) is None  # no boxes file: no check
    (tmp_path / "data" / "boxes.csv").write_text("image,class,x0,y0,x1,y1\na.png,cat,1,2,three,4\n")
    with pytest.raises(ValueError, match="line 2"):
        read_boxes(tmp_path / "data")


# --- score and evidence ------------------------------------------------------------------------


def test_score_grows_with_probability_and_with_the_drop_outside_the_positive():
    logits = torch.tensor([[2.0, 2.0, 2.0, -1.0, 0.0]])
    masked = torch.tensor([[2.0, -2.0, 4.0, -5.0, 0.0]])
    score = missing_label_score(logits, masked, gap_scale=1.0)[0]
    assert score[0] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item() / 2)  # no drop: half the probability
    assert score[1] > score[0] > score[2]  # a drop is evidence, a rise is counter-evidence
    assert score[1] > score[3]  # the same drop on a class the model does not believe in counts less
    loose = missing_label_score(logits, masked, gap_scale=10.0)[0]
    assert loose[1] < score[1]  # a drop is measured in units of T_gap


def test_batch_evidence_masks_only_images_with_a_positive(model):
    images = torch.randn(3, 3, 32, 32)
    observed = torch.zeros(3, len(model.classes), dtype=torch.int8)
    observed[0, 2] = 1
    observed[2, 5] = 1
    observed[2, 1] = -1
    evidence = batch_evidence(model, images, observed)
    assert np.array_equal(evidence.masked_logits[1], evidence.logits[1])  # all-ones mask: no second pass
    assert not np.array_equal(evidence.masked_logits[0], evidence.logits[0])
    assert not evidence.rejected[(observed != 0).numpy()].any()  # positives and known negatives are never rejected
    alone = batch_evidence(model, images[2:], observed[2:])  # per-image normalisation: batch independent
    assert np.allclose(alone.score[0], evidence.score[2], atol=1e-5)
    assert np.array_equal(alone.suspect_boxes[0], evidence.suspect_boxes[2])


# --- report -----------------------------------------------------------------------------------


def test_report_columns_order_and_summary(world, model, reference):
    rows = read_rows(reference)
    split = load_dataset(world).split("test")
    assert set(REPORT_COLUMNS) <= set(rows[0]) and list(rows[0]) == list(REPORT_COLUMNS)
    assert len(rows) == int((split.observed == 0).sum())
    scores = [float(row["score"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert [int(row["rank"]) for row in rows] == list(range(1, len(rows) + 1))
    assert {row["rejected"] for row in rows} == {"0", "1"}
    assert {row["truth"] for row in rows} == {"0", "1"}
    by_image = {path.relative_to(split.source.parent).as_posix(): i for i, path in enumerate(split.images)}
    for row in rows:
        index = by_image[row["image"]]
        assert split.observed[index, split.classes.index(row["class"])] == 0  # never the annotated positive
        assert row["positive"] == split.classes[int(np.flatnonzero(split.observed[index] == 1)[0])]
        assert int(row["truth"]) == split.labels[index, split.classes.index(row["class"])]
        assert float(row["gap"]) == pytest.approx(abs(float(row["logit"]) - float(row["masked_logit"])), abs=1e-5)
    summary = json.loads(reference.with_suffix(".json").read_text())
    assert summary["images"] == 12 and summary["candidates"] == len(rows) and summary["skipped"] == 0
    assert summary["rejected"] == sum(row["rejected"] == "1" for row in rows)
    evaluation = summary["evaluation"]
    assert evaluation["hidden_positives"] == sum(row["truth"] == "1" for row in rows)
    for name in ("audit", "probability", "large_loss"):
        overall = evaluation["rankings"][name]["overall"]
        assert {"auroc", "average_precision", "precision_at_100", "recall_at_100", "precision_at_hidden",
                "recall_at_hidden"} <= set(overall)
        assert set(evaluation["rankings"][name]["per_class"]) == set(SYNTHETIC_CLASSES)
    truths = np.array([int(row["truth"]) for row in rows])
    assert evaluation["rankings"]["audit"]["overall"]["average_precision"] == pytest.approx(
        average_precision(np.array(scores), truths))
    assert not (reference.parent / "audit.csv.parts").exists()  # the working files are gone


def test_top_k_writes_the_best_rows(world, model, reference, tmp_path):
    report = audit_dataset(model, world, "test", tmp_path / "top.csv", batch_size=5, top=7,
                           show_progress_bar=False)
    rows = read_rows(report.csv_path)
    assert [row["image"] + row["class"] for row in rows] == [
        row["image"] + row["class"] for row in read_rows(reference)[:7]]
    assert report.summary["rows_written"] == 7 and report.candidates > 7


# --- resume -----------------------------------------------------------------------------------


class Killed(Exception):
    pass


def test_a_killed_audit_resumes_to_the_same_report(world, model, reference, tmp_path):
    out = tmp_path / "audit.csv"
    calls = []

    def kill_after_two_batches(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 2:
            raise Killed

    with pytest.raises(Killed):
        audit_dataset(model, world, "test", out, batch_size=5, progress=kill_after_two_batches,
                      show_progress_bar=False)
    assert calls == [(5, 12), (10, 12)] and not out.exists()
    part = out.parent / "audit.csv.parts" / "rank0-of-1.csv"
    with part.open("a") as handle:  # a batch half written when the process died
        handle.write("images/test/000011.png,circle,0.99")
    resumed = []
    report = audit_dataset(model, world, "test", out, batch_size=5, progress=lambda d, t: resumed.append(d),
                           show_progress_bar=False)
    assert resumed == [12] and report.summary["resumed_from_batch"] == 2
    assert out.read_text() == reference.read_text()
    fresh = audit_dataset(model, world, "test", tmp_path / "again.csv", batch_size=4, resume=True,
                          show_progress_bar=False)
    assert fresh.summary["resumed_from_batch"] == 0  # another batch size: the old parts do not fit

    calls.clear()
    with pytest.raises(Killed):
        audit_dataset(model, world, "test", out, batch_size=5, progress=kill_after_two_batches,
                      show_progress_bar=False)
    with part.open("r+") as handle:  # rows lost in a crash: shorter than the state says
        handle.truncate(10)
    report = audit_dataset(model, world, "test", out, batch_size=5, show_progress_bar=False)
    assert report.summary["resumed_from_batch"] == 0 and out.read_text() == reference.read_text()


# --- sharding ---------------------------------------------------------------------------------


def test_torchrun_with_two_gloo_ranks_gives_the_single_process_report(world, model, reference, tmp_path):
    checkpoint = save_checkpoint(model, tmp_path / "checkpoint")
    out = tmp_path / "sharded.csv"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "spml", "audit",
               "--checkpoint", str(checkpoint), "--data", str(world), "--split", "test", "--out", str(out),
               "--batch-size", "5", "--device", "cpu", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["images"] == 12
    assert_same_report(read_rows(out), read_rows(reference))


def _rank_without_shared_disk(rank: int, world: int, port: int, checkpoint: str, data: str, outs: list[str]) -> None:
    """One gloo rank of a two-machine audit: each rank writes under its own folder, as it would on its
    own disk, so rank 0 must receive rank 1's rows over the process group."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    report = audit_dataset(load_model(checkpoint), data, "test", outs[rank], batch_size=5, show_progress_bar=False)
    Path(outs[rank]).with_suffix(".returned.json").write_text(json.dumps(report.summary))


def test_ranks_without_a_shared_disk_send_their_rows_to_rank_0(world, model, reference, tmp_path):
    checkpoint = save_checkpoint(model, tmp_path / "checkpoint")
    outs = [str(tmp_path / f"machine{rank}" / "audit.csv") for rank in range(2)]
    port = free_local_port()
    torch.multiprocessing.spawn(_rank_without_shared_disk, args=(2, port, str(checkpoint), str(world), outs),
                                nprocs=2)
    assert_same_report(read_rows(Path(outs[0])), read_rows(reference))
    returned = [json.loads(Path(out).with_suffix(".returned.json").read_text()) for out in outs]
    assert returned[0] == returned[1] and returned[0]["world_size"] == 2 and returned[0]["images"] == 12
    assert not Path(outs[1]).exists() and not (tmp_path / "machine1" / "audit.csv.parts").exists()


# --- bad data ---------------------------------------------------------------------------------


def test_bad_rows_and_unreadable_images_are_reported_and_skipped(world, model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(world, broken)
    (broken / "images" / "test" / "000003.png").write_bytes(b"not a png at all")
    with (broken / "test.csv").open("a") as handle:
        handle.write("images/test/missing.png,circle,circle\n")  # header: image,labels,positive
        handle.write("images/test/000000.png,unicorn,\n")
    report = audit_dataset(model, broken, "test", tmp_path / "audit.csv", batch_size=5, show_progress_bar=False)
    assert report.skipped == 3 and report.images == 11
    messages = "\n".join(report.skipped_messages)
    assert "test.csv, line 5:" in messages and "not an image" in messages  # 000003.png is on line 5
    assert "line 14: missing image file" in messages
    assert "line 15: unknown class 'unicorn'" in messages
    assert "images/test/000003.png" not in {row["image"] for row in read_rows(report.csv_path)}
    assert report.summary["skipped_messages"] == report.skipped_messages


def test_a_data_set_listing_the_classes_in_another_order_is_mapped_by_name(world, model, tmp_path):
    shuffled = tmp_path / "shuffled"
    shutil.copytree(world, shuffled)
    (shuffled / "classes.txt").write_text("".join(f"{name}\n" for name in reversed(SYNTHETIC_CLASSES)))
    report = audit_dataset(model, shuffled, "test", tmp_path / "audit.csv", batch_size=5, show_progress_bar=False)
    labels = {row["image"]: row["labels"].split(";") for row in read_rows(shuffled / "test.csv")}
    rows = read_rows(report.csv_path)
    assert rows and all(row["truth"] == str(int(row["class"] in labels[row["image"]])) for row in rows)
    assert all(row["positive"] in labels[row["image"]] and row["class"] != row["positive"] for row in rows)
    with pytest.raises(ValueError, match="are not the model's"):
        (shuffled / "classes.txt").write_text("".join(f"{name}\n" for name in [*SYNTHETIC_CLASSES, "unicorn"]))
        audit_dataset(model, shuffled, "test", tmp_path / "other.csv", show_progress_bar=False)


def test_a_single_positive_data_set_has_no_truth_and_no_evaluation(world, model, tmp_path):
    single = tmp_path / "single"
    shutil.copytree(world, single)
    rows = read_rows(world / "test.csv")
    lines = ["image,labels,positive"] + [f"{r['image']},{r['labels'].split(';')[0]},{r['labels'].split(';')[0]}"
                                         for r in rows]
    (single / "test.csv").write_text("\n".join(lines) + "\n")
    report = audit_dataset(model, single, "test", tmp_path / "audit.csv", batch_size=5, show_progress_bar=False)
    assert report.summary["evaluation"] is None and report.candidates == 12 * 9
    assert {row["truth"] for row in read_rows(report.csv_path)} == {""}


# --- where is the missing object: the boxes ------------------------------------------------------


def colour_cell_model() -> LoadedModel:
    """A network whose CAM of class k is the mean of colour channel k over 8x8 cells (4x4 map of a 32 px
    input): identity head, no bias, so a coloured 8x8 square is a one-cell map of its colour's class."""
    network = LinearCAMModel("compact", torch.nn.AvgPool2d(8), 3, 3)
    with torch.no_grad():
        network.head.weight.copy_(torch.eye(3))
        network.head.bias.zero_()
    return LoadedModel(network.eval(), ["red", "green", "blue"], 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                       cam_threshold=0.5)


def test_boxes_of_the_suspect_and_the_positive_are_the_hand_computed_ones():
    """Green square in cell (row 1, column 2), red in the corner cell (3, 0); red is annotated.

    Bilinear upsampling x8 (align_corners=False) of a one-cell map gives, at pixel x, the source
    coordinate (x + 0.5) / 8 - 0.5 and the value (1 - |dx|)(1 - |dy|) around the cell's centre. The
    best column value is 0.9375 (x = 19 or 20), so a row is in the region where 1 - |dy| > 0.5 / 0.9375:
    rows 8..15, and likewise columns 16..23: box (16, 8, 24, 16) at 32 px. The corner cell is clamped at
    the border: columns 0..7, rows 24..31. The image's own size is 64 x 32 (width x height): x doubles."""
    image = torch.zeros(1, 3, 32, 32)
    image[0, 1, 8:16, 16:24] = 1.0
    image[0, 0, 24:32, 0:8] = 1.0
    observed = torch.tensor([[1, 0, 0]], dtype=torch.int8)
    model = colour_cell_model()
    evidence = batch_evidence(model, image, observed, sizes=torch.tensor([[64, 32]]))
    green, blue = candidate_values(evidence, 0, 1), candidate_values(evidence, 0, 2)
    assert green["suspect_box"] == (32, 8, 48, 16)
    assert green["positive_box"] == blue["positive_box"] == (0, 24, 16, 32)
    assert blue["suspect_box"] is None  # a flat map: no region
    # The masked image keeps only the red corner: green's logit drops to 0, its score is the formula's.
    assert green["logit"] == pytest.approx(1 / 16) and green["masked_logit"] == pytest.approx(0.0)
    assert green["score"] == pytest.approx(torch.sigmoid(torch.tensor(1 / 16)).item()
                                           * torch.sigmoid(torch.tensor(1 / 16)).item())
    assert format_box(green["suspect_box"]) == "32 8 48 16" and parse_box("32 8 48 16") == (32, 8, 48, 16)
    assert format_box(None) == "" and parse_box("") is None
    unscaled = batch_evidence(model, image, observed)  # without sizes: input pixels
    assert candidate_values(unscaled, 0, 1)["suspect_box"] == (16, 8, 24, 16)
    nobody = batch_evidence(model, image, torch.zeros(1, 3, dtype=torch.int8))
    assert candidate_values(nobody, 0, 1)["positive_box"] is None  # no positive: the whole image, no box


def test_boxes_of_a_letterboxed_image_land_on_its_own_pixels():
    """The image of the test above as a 64 x 32 photo letterboxed into the 32 px input: scale 1/2, rows 8..23
    (region (0, 8, 32, 24)). Green's box (16, 8, 24, 16) in input pixels is x 32..48 and y (8 - 8) x 2 = 0
    to (16 - 8) x 2 = 16 of the photo; red's corner cell (rows 24..31) lies on the grey below: no box."""
    image = torch.zeros(1, 3, 32, 32)
    image[0, 1, 8:16, 16:24] = 1.0
    image[0, 0, 24:32, 0:8] = 1.0
    model = colour_cell_model()
    model.resize = "letterbox"
    evidence = batch_evidence(model, image, torch.tensor([[1, 0, 0]], dtype=torch.int8),
                              sizes=torch.tensor([[64, 32]]))
    green = candidate_values(evidence, 0, 1)
    assert green["suspect_box"] == (32, 0, 48, 16)
    assert green["positive_box"] is None and candidate_values(evidence, 0, 0)["suspect_box"] is None


def test_report_rows_carry_well_formed_boxes(reference):
    rows = read_rows(reference)
    for row in rows:
        for column in ("suspect_box", "positive_box"):
            box = parse_box(row[column])
            if box is not None:  # the test images are 32 x 32
                assert 0 <= box[0] < box[2] <= 32 and 0 <= box[1] < box[3] <= 32, (column, row[column])
        assert row["positive_box"] != "" and row["fold"] == ""
    assert any(row["suspect_box"] for row in rows)
