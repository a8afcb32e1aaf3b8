"""Where the audit looks, against boxes people drew: for the hidden labels the audit ranks in its top N
(N = the number of hidden labels), the share whose suspect box (the box of the suspected class's own CAM
region) holds the centre of a drawn box of that class in that image.

The drawn boxes come from the data set's ``boxes.csv`` (``image,class,x0,y0,x1,y1`` in the image's own
pixels, as ``train prepare coco`` writes it); a data set without one has no such check.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

BOXES_FILE = "boxes.csv"
BOX_COLUMNS = ("image", "class", "x0", "y0", "x1", "y1")
Box = tuple[float, float, float, float]


def read_boxes(dataset: str | Path) -> dict[tuple[str, str], list[Box]] | None:
    """The drawn boxes of ``dataset`` by (image as the data set names it, class); None without a boxes file.
    A malformed file is a ValueError naming its line."""
    path = Path(dataset) / BOXES_FILE
    if not path.is_file():
        return None
    boxes: dict[tuple[str, str], list[Box]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        if tuple(next(reader, ())) != BOX_COLUMNS:
            raise ValueError(f"{path}: the header must be {','.join(BOX_COLUMNS)}")
        for number, row in enumerate(reader, start=2):
            try:
                image, name, *corners = row
                x0, y0, x1, y1 = (float(value) for value in corners)
            except ValueError:
                raise ValueError(f"{path}, line {number}: expected image,class,x0,y0,x1,y1, got {row!r}") from None
            boxes[(image, name)].append((x0, y0, x1, y1))
    return dict(boxes)


def holds_centre(suspect: str, drawn: list[Box]) -> bool:
    """Whether the suspect box ("x0 y0 x1 y1", as the report writes it; empty or -1 for no region) holds
    the centre of one of the ``drawn`` boxes (edges included)."""
    values = suspect.split()
    if len(values) != 4:
        return False
    x0, y0, x1, y1 = (float(v) for v in values)
    if min(x0, y0, x1, y1) < 0:
        return False
    return any(x0 <= (a + c) / 2 <= x1 and y0 <= (b + d) / 2 <= y1 for a, b, c, d in drawn)


class WhereCheck:
    """Counts, over the report's rows in rank order, the hidden labels of its top ``top`` rows and those
    whose suspect box holds a drawn box's centre."""

    def __init__(self, boxes: dict[tuple[str, str], list[Box]], top: int):
        self.boxes, self.top = boxes, top
        self.hidden = self.with_box = self.inside = 0

    def add(self, rank: int, image: str, name: str, truth: bool, suspect: str) -> None:
        if rank > self.top or not truth:
            return
        self.hidden += 1
        drawn = self.boxes.get((image, name))
        if drawn:
            self.with_box += 1
            self.inside += holds_centre(suspect, drawn)

    def result(self) -> dict[str, Any]:
        return {"top": self.top, "hidden_in_top": self.hidden, "with_drawn_box": self.with_box,
                "centre_inside": self.inside, "share": self.inside / self.with_box if self.with_box else None}
