"""Where the Audit tab keeps its audits: one folder an audit, named by a digest of its input, that holds
the extracted data set, the report, its summary, the review's decisions and how it was made."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spml.audit import report_json_path
from spml.runtime import atomic_write_text

_AUDIT_ID = re.compile(r"^[0-9a-f]{24}$")


@dataclass(frozen=True)
class AuditRun:
    """An audit's folder: ``data/`` (the extracted data set), ``report.csv`` and its summary
    ``report.json``, the review's ``report.decisions.json``, and ``meta.json`` (how it was made)."""

    folder: Path
    meta: dict[str, Any]

    @property
    def report(self) -> Path:
        return self.folder / "report.csv"

    @property
    def dataset(self) -> Path:
        return self.folder / self.meta["dataset"]

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads(report_json_path(self.report).read_text(encoding="utf-8"))

    def rows(self, limit: int) -> list[dict[str, str]]:
        with self.report.open(newline="", encoding="utf-8") as handle:
            return list(itertools.islice(csv.DictReader(handle), limit))


class AuditWorkspace:
    """Where audits live. An audit's id is a digest of its input (the zip's bytes or the server folder),
    checkpoint and split: the same upload finds its finished audit, and its decisions, again (after a
    page reload or a restart), and nobody can guess another's. One lock per id keeps two uploads of
    the same zip from writing the same folder at once."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def audit_id(self, source: Path, checkpoint: str, split: str) -> str:
        digest = hashlib.sha256(f"{checkpoint}\n{split}\n".encode())
        if source.is_file():
            with source.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        else:
            digest.update(str(source.resolve()).encode())
        return digest.hexdigest()[:24]

    def lock(self, audit_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(audit_id, threading.Lock())

    def open(self, audit_id: str | None) -> AuditRun | None:
        """The finished audit of ``audit_id``; None for anything else (unknown, unfinished, malformed id)."""
        if not audit_id or not _AUDIT_ID.match(str(audit_id)):
            return None
        folder = self.directory / audit_id
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        run = AuditRun(folder, meta)
        return run if run.report.is_file() and report_json_path(run.report).is_file() else None

    def browser_secret(self) -> str:
        """The key of the browser-stored audit id, kept on disk so that it outlives a restart."""
        path = self.directory / ".browser-secret"
        with self._guard:
            if not path.is_file():
                self.directory.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, secrets.token_hex(16))
            return path.read_text().strip()
