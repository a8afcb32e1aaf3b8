"""``python -m spml bench-serve``: the app under many visitors; every answer complete, memory levelling off.

Starts ``python app.py`` in a process of its own on a free local port, then sends ``--requests``
``/analyze`` requests from ``--clients`` gradio clients at once, on real photos (scikit-image's sample
photos when it is installed, at their size and enlarged 4x like a phone's; otherwise synthetic scenes
enlarged), several clients on the same photo at the same moment. It downloads every output file and
decodes it fully, counts the answers, and samples the server's resident memory (VmRSS) as the requests
are answered. A benchmark, not a test: it prints what it measured and whether the memory levelled off
(the growth over the second half of the requests is at most ``--level-mb``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from spml.runtime import free_local_port

APP = Path(__file__).resolve().parents[2] / "app.py"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench-serve", help="many /analyze requests at once: answers and server memory")
    parser.add_argument("--checkpoint", default=None, help="SPML_CHECKPOINT for the server (default: the app's)")
    parser.add_argument("--requests", type=int, default=1000, help="requests in all (default 1000)")
    parser.add_argument("--clients", type=int, default=20, help="clients sending at once (default 20)")
    parser.add_argument("--samples", type=int, default=10, help="memory samples over the run (default 10)")
    parser.add_argument("--level-mb", type=float, default=30.0,
                        help="most growth over the second half that counts as levelled off (default 30 MB)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


def photos(folder: Path) -> list[Path]:
    """Real photos when scikit-image is installed, at their own size and enlarged 4x; synthetic scenes else."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        from spml.data.sample_photos import load_photo
        images = [load_photo(name) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    except ImportError:
        from spml.data.synthetic import render_scene
        images = [render_scene(0, "test", index, 256)[0] for index in range(4)]
    paths = []
    for index, image in enumerate(images):
        for scale in (1, 4):
            path = folder / f"photo-{index}-x{scale}.jpg"
            image.convert("RGB").resize((image.width * scale, image.height * scale)).save(path, quality=90)
            paths.append(path)
    return paths


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def _wait_for(url: str, server: subprocess.Popen, timeout: float = 300.0) -> None:
    from urllib.request import urlopen

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with code {server.returncode} before serving")
        try:
            with urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1.0)
    raise RuntimeError(f"the app did not serve {url} within {timeout:.0f} s")


def _complete(paths: list[Any]) -> None:
    """Every output image decodes to its end (a download cut short raises)."""
    for path in paths:
        if isinstance(path, str) and path.endswith((".jpg", ".jpeg", ".png", ".webp")):
            with Image.open(path) as image:
                image.load()


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from gradio_client import Client, handle_file
    from tqdm import tqdm

    images = photos(workdir / "photos")
    port = free_local_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "SPML_AUDIT_DIR": str(workdir / "audits")}
    if args.checkpoint:
        env["SPML_CHECKPOINT"] = args.checkpoint
    log = (workdir / "server.log").open("w")
    server = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        try:
            _wait_for(url, server)
        except RuntimeError:
            log.flush()
            print((workdir / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        clients = [Client(url, verbose=False) for _ in range(args.clients)]
        start_mb = resident_mb(server.pid)
        every = max(1, args.requests // args.samples)
        samples: list[tuple[int, float]] = [(0, start_mb)]
        errors: list[str] = []
        done = 0
        lock = threading.Lock()

        def one(index: int) -> None:
            nonlocal done
            # Consecutive requests share a photo: several clients send the same one at the same moment.
            photo = images[(index // args.clients) % len(images)]
            try:
                _complete(list(clients[index % args.clients].predict(handle_file(str(photo)), api_name="/analyze")))
            except Exception as error:  # noqa: BLE001 - every failure is counted and reported
                with lock:
                    errors.append(f"{type(error).__name__}: {error}"[:200])
            with lock:
                done += 1
                if done % every == 0:
                    samples.append((done, resident_mb(server.pid)))

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(tqdm(pool.map(one, range(args.requests)), total=args.requests, desc="requests"))
        seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    half = samples[len(samples) // 2][1]
    growth_second_half = samples[-1][1] - half
    return {"requests": args.requests, "clients": args.clients, "answered": args.requests - len(errors),
            "errors": errors[:10], "seconds": seconds, "photos": [p.name for p in images],
            "rss_mb": samples, "growth_mb": samples[-1][1] - samples[0][1], "growth_second_half_mb": growth_second_half,
            "levelled_off": growth_second_half <= args.level_mb}


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="spml-bench-serve-") as folder:
        result = bench(args, Path(folder))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['answered']} of {result['requests']} answered ({result['clients']} clients at once) "
          f"in {result['seconds']:.0f} s")
    for message in result["errors"]:
        print(f"  failed: {message}")
    print("server memory (VmRSS) after N requests:")
    for count, mb in result["rss_mb"]:
        print(f"  {count:6d}  {mb:8.1f} MB")
    print(f"growth {result['growth_mb']:.1f} MB in all, {result['growth_second_half_mb']:.1f} MB over the second "
          f"half: {'levelled off' if result['levelled_off'] else 'still growing'}")
    return 0
