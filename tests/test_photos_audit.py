"""The audit of real photos on the photos checkpoint: a few dozen scenes of 1 to 4 photos (spml.data.scenes),
each annotated with one protocol-drawn positive and its other labels hidden, audited from the command line and
in the page (headless Chromium), where its suspects are reviewed and the corrected CSV exported.

The checkpoint is checkpoints/photos (conftest's photos_checkpoint); without the real photos the tests skip.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from browser import audit_zip, image_src, open_page, require_chromium, review_status
from conftest import SHARED_PHOTOS, needs_shared_photos, served_app
from report_checks import read_rows

from spml.__main__ import main as spml_main
from spml.audit import report_json_path
from spml.checkpoint import read_config
from spml.data.generic import SEPARATOR, read_classes
from spml.data.scenes import SCENES_FOLDER, make_photo_scenes
from spml.metrics import average_precision, sigmoid

pytestmark = [needs_shared_photos, pytest.mark.filterwarnings("ignore:::gradio.queueing")]

SCENES = 24  # train.csv rows; val.csv is written empty, so the train split is all of them
IMAGE_SIZE = 224  # the photos recipe's input size: small scenes, quickly audited


@pytest.fixture(scope="module")
def photo_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scene data set: classes.txt, train.csv (image, labels = the full truth, positive), an empty val.csv."""
    return make_photo_scenes(SHARED_PHOTOS, tmp_path_factory.mktemp("photo-scenes") / "scenes", seed=1,
                             train=SCENES, val=0, image_size=IMAGE_SIZE, progress=False)


def names(text: str) -> set[str]:
    """The classes of a labels/positive/negatives cell."""
    return {name for name in text.split(SEPARATOR) if name}


def hidden_labels(rows: list[dict[str, str]]) -> set[tuple[str, str]]:
    """(image, class) of every true label that is not the annotated positive."""
    return {(row["image"], name) for row in rows for name in names(row["labels"]) - names(row["positive"])}


def zip_scenes(root: Path, archive: Path) -> Path:
    """The data set as someone uploads it: classes.txt, the split CSVs and the scene images in one folder
    (not the plain photos' set beside it, nor sources.json)."""
    files = [root / "classes.txt", root / "train.csv", root / "val.csv", *sorted((root / SCENES_FOLDER).rglob("*.jpg"))]
    with zipfile.ZipFile(archive, "w") as handle:
        for path in files:
            handle.write(path, Path("photo-scenes") / path.relative_to(root))
    return archive


def test_cli_audit_of_photo_scenes_reports_every_unannotated_pair_with_its_truth(photos_checkpoint, photo_scenes,
                                                                                 tmp_path, capsys):
    out = tmp_path / "report.csv"
    assert spml_main(["audit", "--checkpoint", str(photos_checkpoint), "--data", str(photo_scenes), "--split",
                      "train", "--out", str(out), "--batch-size", "8", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads(report_json_path(out).read_text())
    assert printed == summary

    classes = read_classes(photo_scenes)
    scenes = read_rows(photo_scenes / "train.csv")
    assert len(scenes) == SCENES and all(len(names(row["positive"])) == 1 for row in scenes)
    rows = read_rows(out)
    # One row per (image, class) not annotated: every class but the positive, each once.
    expected_pairs = {(row["image"], name) for row in scenes for name in classes if name != row["positive"]}
    assert len(rows) == SCENES * (len(classes) - 1) == len({(r["image"], r["class"]) for r in rows})
    assert {(r["image"], r["class"]) for r in rows} == expected_pairs
    assert (summary["images"], summary["candidates"], summary["rows_written"]) == (SCENES, len(rows), len(rows))
    positives = {row["image"]: row["positive"] for row in scenes}
    assert all(r["positive"] == positives[r["image"]] for r in rows)
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    scores = np.array([float(r["score"]) for r in rows])
    assert (np.diff(scores) <= 0).all() and ((scores >= 0) & (scores <= 1)).all()
    assert sum(r["rejected"] == "1" for r in rows) == summary["rejected"]

    # truth is 1 exactly on the hidden labels (the scene's other photos), 0 on every other pair.
    hidden = hidden_labels(scenes)
    assert {(r["image"], r["class"]) for r in rows if r["truth"] == "1"} == hidden
    assert {r["truth"] for r in rows} == {"0", "1"}
    evaluation = summary["evaluation"]
    assert evaluation["hidden_positives"] == len(hidden)
    truth = np.array([int(r["truth"]) for r in rows])
    logits = np.array([float(r["logit"]) for r in rows])
    # The AP of the audit ranking (the score) and of the class probability, as the report's columns give them.
    for ranking, values in (("audit", scores), ("probability", np.array([sigmoid(z) for z in logits]))):
        overall = evaluation["rankings"][ranking]["overall"]
        assert overall["hidden_positives"] == len(hidden) and overall["candidates"] == len(rows)
        assert overall["average_precision"] == pytest.approx(average_precision(values, truth), rel=1e-9)
        assert 0.0 < overall["average_precision"] <= 1.0
        per_class = evaluation["rankings"][ranking]["per_class"]
        assert sorted(per_class) == sorted(classes)
        assert sum(entry["hidden_positives"] for entry in per_class.values()) == len(hidden)


@pytest.mark.browser
def test_audit_photo_scenes_in_the_page_review_and_export(photos_checkpoint, photo_scenes, tmp_path):
    pytest.importorskip("gradio")
    require_chromium()
    from spml.app.audit import REVIEW_ROWS

    archive = zip_scenes(photo_scenes, tmp_path / "photo-scenes.zip")
    scenes = read_rows(photo_scenes / "train.csv")
    classes = read_classes(photo_scenes)
    audits = tmp_path / "audits"
    with served_app(str(photos_checkpoint), audits) as url, open_page(url) as page:
        info = page.locator("#checkpoint-info").inner_text()
        config = read_config(photos_checkpoint)
        assert f"Loaded: {photos_checkpoint} — {config['architecture']['arch']}, {len(classes)} classes, " \
               f"{config['input']['image_size']} px input" in info
        audit_zip(page, archive)

        # The summary names the images, the candidates, the rule's suspects and the hidden labels the CSV holds.
        reports = list(audits.glob("*/report.csv"))
        assert len(reports) == 1
        report, summary = read_rows(reports[0]), json.loads(report_json_path(reports[0]).read_text())
        text = page.locator("#audit-summary").inner_text()
        assert f"Audited {SCENES} images of train: {SCENES * (len(classes) - 1)} (image, class) candidates" in text
        assert f"rejects {summary['rejected']} of them" in text
        assert f"Hidden labels known ({len(hidden_labels(scenes))} missing positives)" in text
        rankings = summary["evaluation"]["rankings"]
        assert (f"audit {rankings['audit']['overall']['average_precision']:.3f}, probability "
                f"{rankings['probability']['overall']['average_precision']:.3f}") in text
        assert page.locator("#audit-gallery img").count() == 12

        # The review opens on the best-ranked suspect: its image, its class, the positive that was masked.
        shown = min(REVIEW_ROWS, len(report))
        first, second = report[0], report[1]
        question = page.locator("#review-question").inner_text()
        assert re.fullmatch(r"scenes/train/\d{6}\.jpg", first["image"]), "named as the zip's CSV names it"
        assert f"Suspect 1 of {shown} · {first['image']}" in question
        assert f"Is there a {first['class']} in this image?" in question
        assert f"the annotated positive {first['positive']}'s region" in question
        assert f"Score {float(first['score']):.3f}" in question and "Decision: undecided" in question
        assert image_src(page, "review-cam") and image_src(page, "review-positive")

        page.locator("#review-confirm").click()
        review_status(page, f"Decided 1 of {shown}: 1 confirmed, 0 dismissed")
        question = page.locator("#review-question").inner_text()
        assert f"Suspect 2 of {shown} · {second['image']}" in question
        assert f"Is there a {second['class']} in this image?" in question
        page.locator("#review-dismiss").click()
        review_status(page, f"Decided 2 of {shown}: 1 confirmed, 1 dismissed")
        assert f"Suspect 3 of {shown}" in page.locator("#review-question").inner_text()
        page.locator("#review-prev").click()
        page.locator("#review-question").get_by_text("Decision: dismissed (the class is absent)").wait_for()
        page.locator("#review-prev").click()
        page.locator("#review-question").get_by_text("Decision: confirmed (the label is missing)").wait_for()
        assert f"Suspect 1 of {shown} · {first['image']}" in page.locator("#review-question").inner_text()

        page.locator("#review-export").click()
        page.locator("#review-export-message").get_by_text(
            "Wrote train.csv with 1 labels added and 1 classes marked absent").wait_for()
        with page.expect_download() as download:
            page.locator('#review-file a[download="train.csv"]').click()
        exported = Path(download.value.path()).read_text(encoding="utf-8")

    # The export: the confirmed class added to its image's labels (and annotated: in positive), the dismissed
    # one listed in negatives and out of labels; every other row as it was.
    expected = {row["image"]: (names(row["labels"]), names(row["positive"]), set()) for row in scenes}
    expected[first["image"]][0].add(first["class"])
    expected[first["image"]][1].add(first["class"])
    expected[second["image"]][0].discard(second["class"])
    expected[second["image"]][2].add(second["class"])
    reader = csv.DictReader(io.StringIO(exported))
    got = list(reader)
    assert reader.fieldnames == ["image", "labels", "positive", "negatives"]
    assert [row["image"] for row in got] == [row["image"] for row in scenes]
    assert {row["image"]: (names(row["labels"]), names(row["positive"]), names(row["negatives"]))
            for row in got} == expected
