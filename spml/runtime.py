"""What every entry point shares about where it runs: the device, the torchrun process group, and
writing files so that a killed process never leaves half of one behind.

The trainer, the audit, the app and the command line all resolve devices and join process groups
here: one implementation of each.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, rename it over ``path``.

    The rename is atomic on one file system, so readers see the old file or the new one, never a
    partial write. The temporary name is unique per process and thread, so concurrent writers of the
    same file cannot interleave; on an error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`; returns ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_path`; returns ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a scratch folder path beside ``path`` (not created) for the block to fill; when the block
    succeeds, rename it to ``path``.

    A killed or failed block leaves no half-filled ``path`` behind: on an error the scratch folder is
    removed (and a stale one from a killed process is cleared first). ``path`` must not exist yet."""
    import shutil

    path = Path(path)
    scratch = path.with_name(path.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield scratch
        os.replace(scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def print_line(text: str) -> None:
    """``text`` and a newline on stdout in one ``write()``: torchrun's ranks share one stdout pipe, and a
    ``print`` may reach it in two writes, so two ranks' lines could run into one. A pipe write of up to
    4096 bytes (PIPE_BUF) is atomic. Where stdout has no file descriptor (a test's capture), a plain write."""
    line = text + "\n"
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        sys.stdout.write(line)
        return
    sys.stdout.flush()  # what was printed before comes first
    data = line.encode()
    while data:
        data = data[os.write(descriptor, data):]


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now: for a server or a rendezvous started next."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: this process's GPU when CUDA is available, else the CPU. ``auto`` and a bare ``cuda``
    take the GPU of this process (``LOCAL_RANK`` under torchrun, so every rank gets its own); ``cuda:N``
    is taken as given. An explicit ``cuda`` without a GPU is an error that says what to use instead."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for, but no CUDA GPU is available here "
                           "(torch.cuda.is_available() is False); use --device cpu or auto")
    if name in ("auto", "cuda"):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device(name)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job; rank 0 of 1 when run alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False  # whether init_distributed created the process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str, timeout: timedelta | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (NCCL on CUDA, gloo on the CPU),
    or report the one already joined. Alone (WORLD_SIZE unset or 1) nothing is started."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    options = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", **options)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")), started_here=True)


def close_distributed(info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` started it."""
    if info.started_here and dist.is_initialized():
        dist.destroy_process_group()
