"""Publish a checkpoint on the Hugging Face Hub, with a model card written from its config."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from spml.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_config, resolve_checkpoint


def _format_map(value: Any) -> str:
    return "not measured" if value is None else f"{float(value):.2f}"


def model_card(config: dict[str, Any], repo: str) -> str:
    """README.md for the Hub: what the model is, how it was trained, what it measured, how to use it."""
    training = config.get("training", {})
    classes = config["classes"]
    arch = config["architecture"]["arch"]
    shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
    rejection = config.get("rejection")
    thresholds = ("none (not trained with CALR)" if not rejection else
                  f"T_gap = {rejection['gap_threshold']:.4f}, A_c stored per class")
    return f"""---
library_name: spml
pipeline_tag: image-classification
tags:
- multi-label-classification
- single-positive-multi-label
- class-activation-map
- calr
license: mit
---

# {repo}

A multi-label image classifier trained from single-positive labels (one annotated class per image)
with the `spml` project, loss `{training.get('loss', 'unknown')}`.

| | |
|---|---|
| architecture | `{arch}`, input {config['input']['image_size']} x {config['input']['image_size']} |
| data set | `{training.get('dataset', 'unknown')}` |
| epochs, seed | {training.get('epochs', '?')}, {training.get('seed', '?')} |
| best validation mAP (clean labels) | {_format_map(training.get('best_val_map'))} \
(epoch {training.get('best_epoch', '?')}) |
| test mAP | {_format_map(training.get('test_map'))} |
| CAM | normalisation `{config['cam']['normalization']}`, threshold {config['cam']['threshold']} |
| rejection thresholds | {thresholds} |
| code version | {training.get('code_version', '?')} |

Classes: {shown}.

## Use

```python
from spml import load_model, analyze
model = load_model("hf://{repo}")
result = analyze(model, "image.jpg")
print(result.probabilities, result.positive, result.rejected)
```

The mAP figures above were measured by the training run that produced these weights and are
copied from its `config.json`.
"""


def push(checkpoint: str, repo: str, private: bool = False, folder: str | None = None) -> str:
    """Upload ``checkpoint`` to ``repo`` with a model card; with ``folder``, write the files there
    instead and upload nothing (what would be uploaded, for review or tests)."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"--repo must be OWNER/NAME, got {repo!r}")
    source = resolve_checkpoint(checkpoint)
    config = read_config(source)
    with tempfile.TemporaryDirectory() as scratch:
        staging = Path(folder) if folder else Path(scratch)
        staging.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copy2(source / name, staging / name)
        (staging / "README.md").write_text(model_card(config, repo))
        if folder:
            return f"wrote {staging} (config.json, model.safetensors, README.md); nothing uploaded"
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(staging), repo_id=repo,
                                   commit_message=f"spml checkpoint ({config['training'].get('loss', '?')})")
        return f"uploaded to https://huggingface.co/{repo} ({commit.oid if hasattr(commit, 'oid') else commit})"
