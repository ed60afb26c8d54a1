"""Memory of `simsearch serve` under hostile uploads, over loopback. Prints ONE JSON object.

Starts `simsearch serve` on a free 127.0.0.1 port, warms it up with a few good searches, then
runs N concurrent clients that each send --rounds uploads drawn from a mix of hostile ones:

    png16          a 16-bit grayscale PNG of --size x --size pixels (a few hundred KB)
    tiff_float     a 32-bit float TIFF of --size x --size pixels (deflate, under 1 MB)
    jpeg_big       an RGB JPEG of --size x --size pixels
    jpeg_limit     a JPEG of noise just under the upload limit
    png_bomb       a PNG whose header claims 30000 x 30000 pixels (a decompression bomb)
    png_truncated  the 16-bit PNG cut in half (decoding fails half way)
    held_body      a raw body of (limit - 1) bytes whose last byte never comes: held open
    oversize       64 MiB sent the way Python's urllib sends it (no Expect: 100-continue)
    good           a catalog item's PNG (must find itself)

While they run, the server's VmRSS is sampled every --sample-ms from /proc/PID/status; its
VmHWM (kernel-kept peak, reset after the warm-up) is read at the end. Each upload's decode peak
is measured alone first, in a separate process (preprocess on the same bytes), and the JSON
states the bound the server promises and whether the measurement met it:

    baseline + search_threads x (largest decode peak + upload limit)
             + max_uploads x (1 MiB spool + 64 KiB read buffer) + 64 MiB slack

    python scripts/bench_uploads.py [--index-dir DIR] [--clients 16] [--rounds 2] [--size 8192]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

MIB = 1024 * 1024
KINDS = [
    "png16",
    "tiff_float",
    "jpeg_big",
    "jpeg_limit",
    "png_bomb",
    "png_truncated",
    "held_body",
    "oversize",
    "good",
]
# What each kind must get (the held body: 408 once the upload deadline passes).
EXPECTED = {
    "png16": {"200"},
    "tiff_float": {"200"},
    "jpeg_big": {"200"},
    "jpeg_limit": {"200", "422"},  # noise may be refused as blank-ish: either is an answer
    "png_bomb": {"422"},
    "png_truncated": {"422"},
    "held_body": {"408"},
    "oversize": {"413"},
    "good": {"200"},
}
SPOOL_MIB = 1 + 1 / 16  # Starlette's in-memory spool + uvicorn's read buffer per upload
SLACK_MIB = 64


def main() -> None:
    from simsearch.search_index import default_index_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index-dir", type=Path, default=default_index_dir())
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients.")
    parser.add_argument("--rounds", type=int, default=2, help="Uploads per client.")
    parser.add_argument("--size", type=int, default=8192, help="Side of the big images, px.")
    parser.add_argument("--max-upload-mb", type=float, default=16.0)
    parser.add_argument("--upload-timeout", type=float, default=10.0, help="Server's, seconds.")
    parser.add_argument("--max-uploads", type=int, default=32, help="Server's body-read slots.")
    parser.add_argument("--search-threads", type=int, default=2, help="Server's decode threads.")
    parser.add_argument("--oversize-mb", type=float, default=64.0)
    parser.add_argument("--sample-ms", type=float, default=10.0)
    args = parser.parse_args()
    if not 1 <= args.clients <= 256 or not 1 <= args.rounds <= 100 or not 64 <= args.size <= 8192:
        parser.error("need 1 <= --clients <= 256, 1 <= --rounds <= 100, 64 <= --size <= 8192")

    max_upload = int(args.max_upload_mb * MIB)
    with tempfile.TemporaryDirectory() as tmp:
        payloads = make_payloads(args.size, max_upload)
        decode_peaks = measure_decode_peaks(payloads, Path(tmp))
        serve_args = [
            "--max-upload-mb",
            str(args.max_upload_mb),
            "--upload-timeout",
            str(args.upload_timeout),
            "--max-uploads",
            str(args.max_uploads),
            "--search-threads",
            str(args.search_threads),
        ]
        with Server(args.index_dir, serve_args, Path(tmp)) as server:
            good = fetch_catalog_png(server.url)
            payloads["good"] = good
            for _ in range(5):
                search(server.url, "good", good)
            time.sleep(0.5)
            baseline = server.status_kib("VmRSS") / 1024
            server.reset_peak()
            sampler = Sampler(server, args.sample_ms / 1000)
            sampler.start()
            results, wall = run_clients(server.url, payloads, args, max_upload)
            sampler.stop()
            peak_hwm = server.status_kib("VmHWM") / 1024
            time.sleep(2.0)  # idle: what the burst leaves behind
            after = server.status_kib("VmRSS") / 1024
            settled = after  # the lowest within 5 s: the trim runs once a second when idle
            for _ in range(6):
                time.sleep(0.5)
                settled = min(settled, server.status_kib("VmRSS") / 1024)
            alive = httpx.get(f"{server.url}/api/health", timeout=10).json()["status"] == "ok"

    largest = max(decode_peaks.values())
    bound = (
        baseline
        + args.search_threads * (largest + args.max_upload_mb)
        + args.max_uploads * SPOOL_MIB
        + SLACK_MIB
    )
    peak = max(peak_hwm, sampler.peak_kib / 1024)
    by_kind = {
        kind: {
            "statuses": dict(Counter(status for status, _ in results[kind])),
            "seconds_max": round(max((s for _, s in results[kind]), default=0.0), 2),
        }
        for kind in KINDS
        if results[kind]
    }
    unexpected = {
        kind: statuses
        for kind, entry in by_kind.items()
        if not set(statuses := entry["statuses"]) <= EXPECTED[kind]
    }
    report = {
        "benchmark": "uploads",
        "config": {
            "index_dir": str(args.index_dir),
            "clients": args.clients,
            "rounds": args.rounds,
            "image_side_px": args.size,
            "max_upload_mb": args.max_upload_mb,
            "upload_timeout_s": args.upload_timeout,
            "max_uploads": args.max_uploads,
            "search_threads": args.search_threads,
            "oversize_mb": args.oversize_mb,
            "sample_ms": args.sample_ms,
        },
        "payload_bytes": {kind: len(data) for kind, data in payloads.items()},
        "decode_peak_mib": {kind: round(mib, 1) for kind, mib in decode_peaks.items()},
        "wall_seconds": round(wall, 2),
        "by_kind": by_kind,
        "unexpected_statuses": unexpected,
        "server_rss_mib": {
            "baseline": round(baseline, 1),
            "peak": round(peak, 1),
            "peak_sampled": round(sampler.peak_kib / 1024, 1),
            "peak_vmhwm": round(peak_hwm, 1),
            "after": round(after, 1),
            "settled": round(settled, 1),
            "samples": sampler.samples,
        },
        "bound_mib": round(bound, 1),
        "bound_formula": (
            "baseline + search_threads x (largest decode peak + upload limit) "
            f"+ max_uploads x {SPOOL_MIB:g} MiB + {SLACK_MIB} MiB"
        ),
        "meets_bound": peak <= bound,
        "server_alive_after": alive,
        "machine": machine(),
    }
    print(json.dumps(report))


# ---------------------------------------------------------------------- payloads


def make_payloads(side: int, max_upload: int) -> dict[str, bytes]:
    """The hostile uploads, generated (no files needed)."""
    box = (side // 4, side // 3, 3 * side // 4, 2 * side // 3)
    a16 = np.zeros((side, side), np.uint16)
    a16[box[0] : box[2], box[1] : box[3]] = 40_000
    png16 = _encode(Image.fromarray(a16), "PNG")
    af = np.zeros((side, side), np.float32)
    af[box[0] : box[2], box[1] : box[3]] = 0.8
    tiff = _encode(Image.fromarray(af), "TIFF", compression="tiff_adobe_deflate")
    rgb = Image.new("RGB", (side, side), "white")
    ImageDraw.Draw(rgb).rectangle((box[1], box[0], box[3], box[2]), fill=(30, 30, 200))
    jpeg_big = _encode(rgb, "JPEG", quality=90)
    return {
        "png16": png16,
        "tiff_float": tiff,
        "jpeg_big": jpeg_big,
        "jpeg_limit": _noise_jpeg(max_upload),
        "png_bomb": _png_header_bomb(30_000),
        "png_truncated": png16[: len(png16) // 2],
    }


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _noise_jpeg(max_bytes: int) -> bytes:
    """A JPEG of noise as large as fits under ``max_bytes`` (noise does not compress)."""
    rng = np.random.default_rng(0)
    side = 64
    best = b""
    while True:
        noise = rng.integers(0, 256, (side, side, 3), np.uint8)
        data = _encode(Image.fromarray(noise), "JPEG", quality=95)
        if len(data) > max_bytes or side > 8192:
            return best
        best, side = data, int(side * 1.25)


def _png_header_bomb(side: int) -> bytes:
    """A PNG that claims side x side 8-bit pixels and holds a few rows: refused from its header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = zlib.compress(bytes(16 * (side + 1)), 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


_PEAK_PROBE = """
import json, sys
from pathlib import Path
from simsearch.errors import InvalidImageError
from simsearch.images import preprocess
def kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
preprocess(Path(sys.argv[2]).read_bytes())  # warm-up: plugins imported, caches filled
peaks = {}
for path in sorted(Path(sys.argv[1]).iterdir()):
    data = path.read_bytes()
    open("/proc/self/clear_refs", "w").write("5")
    before = kib("VmRSS:")
    try:
        preprocess(data)
    except InvalidImageError:
        pass
    peaks[path.name] = (kib("VmHWM:") - before) / 1024
print(json.dumps(peaks))
"""


def measure_decode_peaks(payloads: dict[str, bytes], tmp: Path) -> dict[str, float]:
    """MiB each upload's preprocess adds to a process at its peak (one at a time, alone)."""
    folder = tmp / "payloads"
    folder.mkdir()
    for kind, data in payloads.items():
        (folder / kind).write_bytes(data)
    warm_up = tmp / "warm-up.png"
    square = Image.new("L", (64, 64), 255)
    square.paste(0, (16, 16, 48, 48))
    warm_up.write_bytes(_encode(square, "PNG"))
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, str(folder), str(warm_up)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {kind: float(mib) for kind, mib in json.loads(out).items()}


# ---------------------------------------------------------------------- the server


class Server:
    """`simsearch serve` in a subprocess on a free loopback port (one process: its RSS is all)."""

    def __init__(self, index_dir: Path, serve_args: list[str], tmp: Path) -> None:
        self.index_dir, self.serve_args, self.log_path = index_dir, serve_args, tmp / "serve.log"

    def __enter__(self) -> Server:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "simsearch.cli", "serve", "--index-dir"]
        command += [str(self.index_dir), "--port", str(self.port), *self.serve_args]
        self.log = open(self.log_path, "wb")  # closed in __exit__
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited:\n{self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise SystemExit("the server did not answer within 180 s")
            try:
                httpx.get(f"{self.url}/api/health", timeout=2).raise_for_status()
                return self
            except httpx.HTTPError:
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise SystemExit(f"no {key} in /proc/{self.process.pid}/status")

    def reset_peak(self) -> None:
        """Start VmHWM afresh from the current RSS (Linux 4.0+: write 5 to clear_refs)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")


class Sampler(threading.Thread):
    """The server's VmRSS every ``interval`` seconds; keeps the largest."""

    def __init__(self, server: Server, interval: float) -> None:
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.peak_kib, self.samples = 0, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.peak_kib = max(self.peak_kib, self.server.status_kib("VmRSS"))
                self.samples += 1
            except (OSError, SystemExit):
                return
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join(10)


# ---------------------------------------------------------------------- the clients


def fetch_catalog_png(url: str) -> bytes:
    with httpx.Client(base_url=url, timeout=30) as client:
        item = client.get("/api/items/random").json()
        response = client.get(item["image_url"])
        response.raise_for_status()
        return response.content


def search(url: str, kind: str, data: bytes) -> str:
    """POST one image as multipart; the status (or the exception's name)."""
    try:
        response = httpx.post(
            f"{url}/api/search?k=5", files={"image": (f"{kind}.bin", data)}, timeout=600
        )
    except httpx.HTTPError as exc:
        return type(exc).__name__
    found = response.json()["results"] if kind == "good" and response.status_code == 200 else []
    if found and found[0]["similarity"] < 0.9999:
        return "wrong_top1"
    return str(response.status_code)


def held_body(port: int, max_upload: int, hold: float) -> str:
    """Declare ``max_upload`` bytes, send all but the last, wait for an answer up to ``hold`` s."""
    head = (
        "POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {max_upload}\r\n\r\n"
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=hold) as sock:
            sock.sendall(head.encode() + bytes(max_upload - 1))
            answer = sock.recv(4096)
    except TimeoutError:
        return "no_answer"
    except OSError as exc:
        return type(exc).__name__
    return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"


def oversize(url: str, n_bytes: int) -> str:
    """A raw body of ``n_bytes`` sent as urllib sends it: all of it, then read the answer."""
    request = urllib.request.Request(
        f"{url}/api/search",
        data=bytes(n_bytes),
        headers={"Content-Type": "application/octet-stream"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code) if "error" in json.loads(exc.read() or b"{}") else f"{exc.code}?"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return type(reason).__name__


def run_clients(
    url: str, payloads: dict[str, bytes], args: argparse.Namespace, max_upload: int
) -> tuple[dict[str, list[tuple[str, float]]], float]:
    port = int(url.rsplit(":", 1)[1])
    results: dict[str, list[tuple[str, float]]] = {kind: [] for kind in KINDS}
    lock = threading.Lock()

    def one(kind: str) -> str:
        if kind == "held_body":
            return held_body(port, max_upload, args.upload_timeout + 30)
        if kind == "oversize":
            return oversize(url, int(args.oversize_mb * MIB))
        return search(url, kind, payloads[kind])

    def client(number: int) -> None:
        for round_ in range(args.rounds):
            kind = KINDS[(number + round_ * 5) % len(KINDS)]
            started = time.perf_counter()
            status = one(kind)
            with lock:
                results[kind].append((status, time.perf_counter() - started))

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.monotonic() - started


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / MIB, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "note": "client and server share the machine's CPUs",
    }


if __name__ == "__main__":
    main()
