"""The audit of a data set for missing labels, and its review.

Rooms: :mod:`~spml.audit.scoring` (the score, a batch's evidence, a report row's numbers and the
review's pictures), :mod:`~spml.audit.run` (the resumable sharded run), :mod:`~spml.audit.report`
(the sorted report and its evaluation), :mod:`~spml.audit.folds` (cross-fitted checkpoints),
:mod:`~spml.audit.review` (the decision store and the corrected data set), :mod:`~spml.audit.uploads`
(hostile zips and server folders).
"""

from spml.audit.folds import FoldModels, load_audit_model
from spml.audit.report import REPORT_COLUMNS, report_json_path
from spml.audit.review import (
    ReviewError,
    decisions_path,
    export_corrected_dataset,
    load_decisions,
    parse_decision,
    record_decision,
)
from spml.audit.run import AuditReport, audit_dataset
from spml.audit.scoring import (
    BatchEvidence,
    batch_evidence,
    candidate_values,
    missing_label_score,
    suspect_evidence,
)
from spml.audit.uploads import dataset_root, resolve_server_dataset, safe_extract_zip

__all__ = [
    "REPORT_COLUMNS",
    "AuditReport",
    "BatchEvidence",
    "FoldModels",
    "ReviewError",
    "audit_dataset",
    "batch_evidence",
    "candidate_values",
    "dataset_root",
    "decisions_path",
    "export_corrected_dataset",
    "load_audit_model",
    "load_decisions",
    "missing_label_score",
    "parse_decision",
    "record_decision",
    "report_json_path",
    "resolve_server_dataset",
    "safe_extract_zip",
    "suspect_evidence",
]
