"""Review of an audit: the decision store, the hand-filled CSV, the corrected data set, hostile zips,
server paths and the evidence of one suspect."""

from __future__ import annotations

import csv
import io
import json
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spml.__main__ import main as spml_main
from spml.audit import (
    ReviewError,
    audit_dataset,
    decisions_path,
    export_corrected_dataset,
    load_decisions,
    parse_decision,
    record_decision,
    resolve_server_dataset,
    safe_extract_zip,
    suspect_evidence,
)
from spml.audit.scoring import format_box
from spml.audit.uploads import _copy_limited
from spml.checkpoint import LoadedModel
from spml.data import IMAGENET_MEAN, IMAGENET_STD, SYNTHETIC_CLASSES, load_dataset, make_synthetic_dataset
from spml.model import create_model


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A train.csv of 10 images at 32 px (full labels; no val.csv, so train is split 80/20)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("review") / "world", seed=5, train=10, val=0, test=0,
                                  image_size=32, progress=False)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    torch.manual_seed(0)
    network = create_model("compact", len(SYNTHETIC_CLASSES), width=8).eval()
    return LoadedModel(network, list(SYNTHETIC_CLASSES), 32, IMAGENET_MEAN, IMAGENET_STD)


def write_report(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A report CSV with (image, class, decision) rows and the audit's other columns left empty."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "image", "class", "score", "positive", "decision"])
        for rank, (image, name, decision) in enumerate(rows, start=1):
            writer.writerow([rank, image, name, 0.5, "", decision])
    return path


# --- decisions --------------------------------------------------------------------------------


def test_decisions_survive_a_reload_and_can_be_withdrawn(tmp_path):
    report = write_report(tmp_path / "audit.csv", [("a.png", "circle", ""), ("b.png", "star", "")])
    assert load_decisions(report) == {}
    record_decision(report, "a.png", "circle", "confirm")
    decisions = record_decision(report, "b.png", "star", "dismiss")
    assert decisions == {"a.png": {"circle": "confirm"}, "b.png": {"star": "dismiss"}}
    assert decisions_path(report) == tmp_path / "audit.decisions.json"
    assert load_decisions(report) == decisions  # a new call reads the store again: a reload or a restart
    assert record_decision(report, "b.png", "star", None) == {"a.png": {"circle": "confirm"}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.csv", "audit.decisions.json"]  # no temp left
    with pytest.raises(ReviewError, match="decision must be"):
        record_decision(report, "a.png", "circle", "maybe")


def test_a_hand_filled_decision_column_is_accepted_and_the_store_wins(tmp_path):
    words = [("a.png", "circle", "yes"), ("a.png", "star", "0"), ("b.png", "ring", "Confirm"),
             ("c.png", "bar", " "), ("d.png", "heart", "dismiss")]
    report = write_report(tmp_path / "audit.csv", words)
    assert load_decisions(report) == {"a.png": {"circle": "confirm", "star": "dismiss"},
                                      "b.png": {"ring": "confirm"}, "d.png": {"heart": "dismiss"}}
    record_decision(report, "a.png", "circle", "dismiss")
    record_decision(report, "d.png", "heart", None)  # withdrawn in the app, although the CSV says dismiss
    assert load_decisions(report) == {"a.png": {"circle": "dismiss", "star": "dismiss"},
                                      "b.png": {"ring": "confirm"}}
    assert [parse_decision(w) for w in ("1", "TRUE", "n", "no", "", None)] == [
        "confirm", "confirm", "dismiss", "dismiss", None, None]
    write_report(tmp_path / "bad.csv", [("a.png", "circle", "perhaps")])
    with pytest.raises(ReviewError, match="line 2: unknown decision 'perhaps'"):
        load_decisions(tmp_path / "bad.csv")


# --- corrected data set -----------------------------------------------------------------------


def test_export_round_trip_then_training_reads_the_negatives(world, tmp_path):
    dataset = load_dataset(world)
    rows = list(csv.DictReader((world / "train.csv").open()))
    first, second = rows[0]["image"], rows[1]["image"]
    labels_first = rows[0]["labels"].split(";")
    missing = next(name for name in SYNTHETIC_CLASSES if name not in labels_first)
    hidden = next(n for n in rows[1]["labels"].split(";")
                  if n != positive_of(dataset, world / second))  # a label of the file, not the positive
    absent = next(name for name in SYNTHETIC_CLASSES if name not in rows[1]["labels"].split(";"))
    report = write_report(tmp_path / "audit.csv", [(first, missing, "yes")])  # decided by hand in the CSV
    record_decision(report, second, hidden, "dismiss")  # decided in the app
    record_decision(report, second, absent, "dismiss")
    record_decision(report, "images/train/999999.png", "star", "confirm")
    record_decision(report, first, positive_of(dataset, world / first), "dismiss")  # the annotated positive

    corrected = tmp_path / "corrected"
    shutil.copytree(world, corrected)
    result = export_corrected_dataset(world, "train.csv", load_decisions(report), corrected / "train.csv")
    assert result["confirmed"] == 1 and result["dismissed"] == 2
    assert len(result["problems"]) == 2 and "is the annotated positive and cannot be dismissed" in result["problems"][0]
    assert result["problems"][1] == "images/train/999999.png: not in train.csv"
    out_rows = list(csv.DictReader((corrected / "train.csv").open()))
    assert list(out_rows[0]) == ["image", "labels", "positive", "negatives"]
    assert [r["image"] for r in out_rows] == [r["image"] for r in rows]  # every row, in order
    assert all(r["labels"] == o["labels"] for r, o in zip(rows[2:], out_rows[2:], strict=True))

    assert out_rows[0]["positive"] == f"{rows[0]['positive']};{missing}"  # the confirmation is an annotation
    again = load_dataset(corrected)
    row_first, row_second = index_of(again, corrected / first), index_of(again, corrected / second)
    split_first, split_second = again.split(row_first[0]), again.split(row_second[0])
    for name in ("train", "val"):  # otherwise the positives the audit saw: the protocol is not re-drawn
        expected = dataset.split(name).observed.copy()
        if name == row_first[0]:
            expected[row_first[1], SYNTHETIC_CLASSES.index(missing)] = 1
        assert np.array_equal(again.split(name).observed.clip(0, 1), expected)
    assert split_first.labels[row_first[1], SYNTHETIC_CLASSES.index(missing)] == 1
    for name in (hidden, absent):
        assert split_second.observed[row_second[1], SYNTHETIC_CLASSES.index(name)] == -1
        assert split_second.labels[row_second[1], SYNTHETIC_CLASSES.index(name)] == 0

    # One tiny CALR step on the corrected data set: train fit reads its negatives.
    from train.__main__ import main as train_main

    run = tmp_path / "run"
    code = train_main(["fit", "--data", str(corrected), "--loss", "calr", "--arch", "compact", "--out", str(run),
                       "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--no-pretrained",
                       "--device", "cpu", "--workers", "0", "--max-steps-per-epoch", "1", "--warmup-epochs", "0"])
    assert code == 0 and (run / "summary.json").is_file()


def test_export_of_a_data_set_as_annotated_protects_every_label(world, tmp_path):
    """Without a positive column every label is annotated: none can be dismissed, and a confirmed class
    becomes annotated like the others (no positive column is added)."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "classes.txt").write_text((world / "classes.txt").read_text())
    (own / "images").symlink_to(world / "images")
    rows = [r for r in csv.DictReader((world / "train.csv").open())]
    with (own / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image", "labels"])
        writer.writerows([r["image"], r["labels"]] for r in rows)
    image, labels = rows[0]["image"], rows[0]["labels"].split(";")
    missing = next(name for name in SYNTHETIC_CLASSES if name not in labels)
    report = write_report(tmp_path / "audit.csv", [(image, missing, "yes"), (image, labels[-1], "no")])
    result = export_corrected_dataset(own, "train.csv", load_decisions(report), own / "train.csv")
    assert result["confirmed"] == 1 and result["dismissed"] == 0
    assert result["problems"] == [f"{image}: {labels[-1]!r} is the annotated positive and cannot be dismissed"]
    assert (own / "train.csv").read_text().splitlines()[0] == "image,labels"
    corrected = load_dataset(own)
    split_name, row = index_of(corrected, own / image)
    observed = corrected.split(split_name).observed[row]
    assert sorted(SYNTHETIC_CLASSES[c] for c in np.flatnonzero(observed == 1)) == sorted([*labels, missing])


def positive_of(dataset, image: Path) -> str:
    split_name, row = index_of(dataset, image)
    return SYNTHETIC_CLASSES[int(np.flatnonzero(dataset.split(split_name).observed[row] == 1)[0])]


def index_of(dataset, image: Path) -> tuple[str, int]:
    for name, split in dataset.splits.items():
        if image.resolve() in [p.resolve() for p in split.images]:
            return name, [p.resolve() for p in split.images].index(image.resolve())
    raise AssertionError(f"{image} not in the data set")


def test_review_export_command_uses_the_store_and_the_csv(world, tmp_path, capsys):
    rows = list(csv.DictReader((world / "train.csv").open()))
    image = rows[3]["image"]
    absent = next(name for name in SYNTHETIC_CLASSES if name not in rows[3]["labels"].split(";"))
    report = write_report(tmp_path / "audit.csv", [(image, absent, "no")])
    out = tmp_path / "corrected.csv"
    assert spml_main(["review-export", "--report", str(report), "--data", str(world), "--split", "val",
                      "--out", str(out)]) == 0
    assert "1 dismissed" in capsys.readouterr().out
    written = {r["image"]: r for r in csv.DictReader(out.open())}
    assert written[image]["negatives"] == absent
    assert written[image]["positive"] == rows[3]["positive"]  # the positives stay as written


# --- hostile zips -----------------------------------------------------------------------------


def zip_of(path: Path, entries: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


@pytest.fixture(scope="module")
def dataset_files(world) -> dict[str, bytes]:
    """A small data set as zip entries, inside a top folder as a user's zip usually has it."""
    files = {"data/classes.txt": (world / "classes.txt").read_bytes()}
    rows = (world / "train.csv").read_text().splitlines()[:4]
    files["data/train.csv"] = ("\n".join(rows) + "\n").encode()
    for row in rows[1:]:
        image = row.split(",")[0]
        files[f"data/{image}"] = (world / image).read_bytes()
    return files


def test_a_good_zip_is_extracted_and_its_root_found(dataset_files, tmp_path):
    extras = {"data/run.sh": b"rm -rf /", "__MACOSX/data/._train.csv": b"junk", "data/.hidden.csv": b"x",
              "data/notes.txt": b"kept"}
    root = safe_extract_zip(zip_of(tmp_path / "ok.zip", {**dataset_files, **extras}), tmp_path / "out")
    assert root == tmp_path / "out" / "data"
    assert len(load_dataset(root).split("train")) + len(load_dataset(root).split("val")) == 3
    assert not (root / "run.sh").exists() and not (tmp_path / "out" / "__MACOSX").exists()
    assert not (root / ".hidden.csv").exists() and (root / "notes.txt").is_file()


@pytest.mark.parametrize("entries, links, message", [
    ({"../escape.csv": b"x"}, None, "leaves the extraction folder"),
    ({"data/../../escape.csv": b"x"}, None, "leaves the extraction folder"),
    ({"/etc/passwd.txt": b"x"}, None, "absolute path"),
    ({"C:/windows/x.csv": b"x"}, None, "absolute path"),
    ({}, {"data/link.png": "/etc/passwd"}, "link or a special file"),
], ids=["dot-dot", "nested-dot-dot", "absolute", "drive", "symlink"])
def test_escaping_entries_refuse_the_zip(dataset_files, tmp_path, entries, links, message):
    archive = zip_of(tmp_path / "evil.zip", {**dataset_files, **entries}, links)
    with pytest.raises(ReviewError, match=message):
        safe_extract_zip(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # nothing left behind
    assert not (tmp_path / "escape.csv").exists()


def test_zip_bombs_and_floods_are_refused(dataset_files, tmp_path):
    bomb = zip_of(tmp_path / "bomb.zip", {**dataset_files, "data/big.csv": b"\0" * 2_000_000})
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ReviewError, match="declares .* more than"):
        safe_extract_zip(bomb, tmp_path / "a", max_total_bytes=1_000_000)

    # A header that lies: the entry declares 1,000 bytes and inflates to 2,000,000.
    data = bytearray(bomb.read_bytes())
    with zipfile.ZipFile(bomb) as archive:
        info = archive.getinfo("data/big.csv")
    size_field = (2_000_000).to_bytes(4, "little")
    assert data.count(size_field) == 2  # the local header and the central directory
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(data).replace(size_field, (1000).to_bytes(4, "little")))
    with pytest.raises(ReviewError, match="not a readable zip .*Bad CRC"):  # zipfile stops at the declared size
        safe_extract_zip(liar, tmp_path / "b", max_total_bytes=1_000_000)
    assert info.file_size == 2_000_000 and list((tmp_path / "b").iterdir()) == []
    # Our own count does not rely on that: a stream longer than declared, or than the budget, stops.
    with pytest.raises(ReviewError, match="inflates past its declared size"):
        _copy_limited(io.BytesIO(b"x" * 5000), tmp_path / "long", 1000, 10**6, "long")
    with pytest.raises(ReviewError, match="past the limit of 3,000 bytes"):
        _copy_limited(io.BytesIO(b"x" * 5000), tmp_path / "over", 10**6, 3000, "over")

    flood = zip_of(tmp_path / "flood.zip", {**dataset_files, **{f"data/f{i}.txt": b"" for i in range(30)}})
    with pytest.raises(ReviewError, match="entries, more than the 20 allowed"):
        safe_extract_zip(flood, tmp_path / "c", max_files=20)

    with pytest.raises(ReviewError, match="over the limit of 100 pixels"):
        safe_extract_zip(zip_of(tmp_path / "huge.zip", dataset_files), tmp_path / "d", max_image_pixels=100)

    with pytest.raises(ReviewError, match="not a readable zip"):
        (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really")
        safe_extract_zip(tmp_path / "junk.zip", tmp_path / "e")

    with pytest.raises(ReviewError, match="new or empty folder"):
        safe_extract_zip(zip_of(tmp_path / "ok.zip", dataset_files), tmp_path)


def test_a_zip_without_a_data_set_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("images/a.png", b"x")
    (tmp_path / "none.zip").write_bytes(buffer.getvalue())
    with pytest.raises(ReviewError, match="no classes.txt"):
        safe_extract_zip(tmp_path / "none.zip", tmp_path / "out")


# --- server paths and evidence ----------------------------------------------------------------


def test_server_paths_need_the_operators_consent(world, monkeypatch):
    monkeypatch.delenv("SPML_ALLOW_SERVER_PATHS", raising=False)
    with pytest.raises(PermissionError, match="SPML_ALLOW_SERVER_PATHS=1"):
        resolve_server_dataset(world)
    monkeypatch.setenv("SPML_ALLOW_SERVER_PATHS", "true")  # only "1" opens it
    with pytest.raises(PermissionError):
        resolve_server_dataset(world)
    monkeypatch.setenv("SPML_ALLOW_SERVER_PATHS", "1")
    assert resolve_server_dataset(world) == world.resolve()
    with pytest.raises(ReviewError, match="not a data set folder"):
        resolve_server_dataset(world / "images")


def test_suspect_evidence_gives_the_pictures_and_numbers(world, model):
    row = next(csv.DictReader((world / "train.csv").open()))
    labels = row["labels"].split(";")
    missing = next(name for name in SYNTHETIC_CLASSES if name not in labels)
    evidence = suspect_evidence(model, world, {"image": row["image"], "class": missing, "positive": labels[0]})
    assert evidence["image"].shape == (32, 32, 3) and evidence["suspect_overlay"].shape == (32, 32, 3)
    assert evidence["suspect_cam"].shape == (32, 32) and evidence["positive_cam"].shape == (32, 32)
    assert evidence["masked_image"].shape == (32, 32, 3) and evidence["positive"] == labels[0]
    assert evidence["positive_given"] and evidence["class"] == missing and evidence["image_size"] == (32, 32)
    assert evidence["gap"] == pytest.approx(abs(evidence["logit"] - evidence["masked_logit"]), abs=1e-5)
    json.dumps({k: v for k, v in evidence.items() if not isinstance(v, np.ndarray)})  # the numbers are plain
    unannotated = suspect_evidence(model, world, {"image": row["image"], "class": missing, "positive": ""})
    assert not unannotated["positive_given"] and unannotated["positive_cam"] is None
    assert unannotated["positive_box"] is None and unannotated["masked_logit"] == unannotated["logit"]
    with pytest.raises(ReviewError, match="outside the data set folder"):
        suspect_evidence(model, world, {"image": "../../etc/passwd", "class": missing, "positive": ""})


def test_the_reviews_numbers_are_the_report_rows(world, model, tmp_path):
    """Every number and box the review shows equals the report row's, also for an image without an
    annotated positive (which the review once recomputed with the top prediction's CAM)."""
    data = tmp_path / "data"
    shutil.copytree(world, data)
    rows = list(csv.DictReader((world / "train.csv").open()))
    lines = ["image,labels,positive"] + [f"{r['image']},{r['labels']},{'' if i < 3 else r['labels'].split(';')[0]}"
                                         for i, r in enumerate(rows)]
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    report = audit_dataset(model, data, "train", tmp_path / "audit.csv", batch_size=3, show_progress_bar=False)
    report_rows = list(csv.DictReader(report.csv_path.open()))
    assert any(not row["positive"] for row in report_rows) and any(row["positive"] for row in report_rows)
    for row in report_rows:
        evidence = suspect_evidence(model, data, row)
        for column in ("score", "probability", "logit", "masked_logit", "gap"):
            assert evidence[column] == pytest.approx(float(row[column]), rel=1e-5, abs=1e-6), column
        assert int(evidence["rejected"]) == int(row["rejected"])
        assert format_box(evidence["suspect_box"]) == row["suspect_box"]
        assert format_box(evidence["positive_box"]) == row["positive_box"]
        assert evidence["positive"] == row["positive"]
