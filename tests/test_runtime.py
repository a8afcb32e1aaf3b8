"""spml.runtime: atomic writes, the device resolver and the process-group helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from spml.runtime import (
    DistInfo,
    atomic_directory,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    init_distributed,
    print_line,
    resolve_device,
)


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "report.csv"
    atomic_write_text(target, "old\n")
    atomic_write_bytes(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert [p.name for p in target.parent.iterdir()] == ["report.csv"]  # no temporary file left behind


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_text(target, "intact")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as temporary:
        temporary.write_text("half of a new fi")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "data"
    (tmp_path / "data.partial").mkdir()  # left behind by a killed process: cleared first
    (tmp_path / "data.partial" / "stale.txt").write_text("old")
    with pytest.raises(RuntimeError, match="killed"), atomic_directory(target) as scratch:
        scratch.mkdir()
        (scratch / "half.csv").write_text("image,labels\n")
        raise RuntimeError("killed mid-extraction")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its scratch copy
    with atomic_directory(target) as scratch:
        assert not scratch.exists()
        scratch.mkdir()
        (scratch / "train.csv").write_text("image,labels\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert (target / "train.csv").read_text() == "image,labels\n"


def test_print_line_keeps_the_lines_of_processes_sharing_a_pipe_whole(capsys):
    """Two processes print 300 lines of 3,000 bytes each into one pipe, as torchrun's ranks share stdout."""
    code = ("import sys\nfrom spml.runtime import print_line\n"
            "for i in range(300):\n    print_line(sys.argv[1] * 3000 + str(i))\n")
    read, write = os.pipe()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    writers = [subprocess.Popen([sys.executable, "-c", code, letter], stdout=write, env=env) for letter in "ab"]
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        lines = pipe.read().decode().splitlines()
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]
    assert len(lines) == 600
    for letter in "ab":
        mine = [line for line in lines if line.startswith(letter)]
        assert mine == [letter * 3000 + str(i) for i in range(300)]
    print_line("captured")  # stdout without a file descriptor (pytest's capture): a plain write
    assert capsys.readouterr().out == "captured\n"


def test_concurrent_writers_never_interleave(tmp_path):
    target = tmp_path / "decisions.json"
    texts = [f"{i}" * 20000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write_text, args=(target, text)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_text() in texts


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_alone_no_process_group_is_started(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo() and not info.enabled and info.is_main and not info.started_here
