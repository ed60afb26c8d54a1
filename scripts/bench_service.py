"""Load test of `simsearch serve`, from a second process, over loopback. Prints ONE JSON object.

Starts `simsearch serve` on a free 127.0.0.1 port for an index, fetches catalog items from it as
PNG files, then runs N concurrent clients (threads with keep-alive httpx connections) that
upload those PNGs to POST /api/search for a fixed time. One request in --bad-every is malformed
(not an image, truncated PNG, empty file, wrong field, k out of range, or over the upload limit).
Reports requests/s, latency percentiles of the good requests, errors on good requests (must be
0), the statuses the malformed ones got, and the server's RSS before and after.

    python scripts/bench_service.py [--index-dir DIR] [--seconds 30] [--clients 16]

With ``--ray ADDRESS`` (``local``: a cluster of a head and one worker node started here with
``ray.cluster_utils``), the same load also runs against ``simsearch serve --ray`` with each of
``--replicas`` (1,2), next to plain ``serve`` in the same run, and the shard fan-out is measured:
copies of the index cut into each of ``--shards`` (1,2,4) shards, served with ``--ray``, queried
by ``--fanout-clients`` (1) clients, next to the whole index on ``--ray`` the same way.

    python scripts/bench_service.py --ray local --seconds 20 --clients 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

MIB = 1024 * 1024


def main() -> None:
    from simsearch.search_index import default_index_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index-dir", type=Path, default=default_index_dir())
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of the load phase.")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients.")
    parser.add_argument("--bad-every", type=int, default=50, help="1 malformed upload in N.")
    parser.add_argument("-k", type=int, default=10, help="Neighbours per query.")
    parser.add_argument("--images", type=int, default=200, help="Distinct catalog PNGs to send.")
    parser.add_argument("--workers", type=int, default=1, help="Server worker processes.")
    parser.add_argument("--max-requests", type=int, default=2_000_000, help="Hard cap.")
    parser.add_argument("--ray", metavar="ADDRESS", help="Also run serve --ray (local: here).")
    parser.add_argument("--replicas", default="1,2", help="With --ray: replica counts.")
    parser.add_argument("--shards", default="1,2,4", help="With --ray: shard counts (fan-out).")
    parser.add_argument("--fanout-clients", type=int, default=1, help="Clients of the fan-out.")
    args = parser.parse_args()
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 3600 or args.bad_every < 2:
        parser.error("need 1 <= --clients <= 256, 0 < --seconds <= 3600, --bad-every >= 2")

    with tempfile.TemporaryDirectory() as tmp:
        plain = measure(args, Server(args.index_dir, ["--workers", str(args.workers)], tmp))
        if args.ray is None:
            health = plain.pop("health")
            plain.pop("server")
            settings = {**config(args), "distinct_images": plain.pop("distinct_images")}
            print(json.dumps(report(args, health, {"config": settings, **plain})))
            return
        runs, fanout = [plain], []
        with ray_cluster(args.ray) as address:
            where = "local" if args.ray == "local" else "remote"
            for replicas in _counts(args.replicas):
                ray_args = ["--ray", address, "--replicas", str(replicas)]
                runs.append(measure(args, Server(args.index_dir, ray_args, tmp, ray=where)))
            one_by_one = argparse.Namespace(**{**vars(args), "clients": args.fanout_clients})
            whole = Server(args.index_dir, ["--ray", address], tmp, ray=where)
            fanout.append({"shards": None, **measure(one_by_one, whole)})
            for shards in _counts(args.shards):
                copy = sharded_copy(args.index_dir, Path(tmp) / f"shards-{shards}", shards)
                server = Server(copy, ["--ray", address], tmp, ray=where)
                fanout.append({"shards": shards, **measure(one_by_one, server)})
    health = plain.pop("health")
    for run in [*runs[1:], *fanout]:
        run.pop("health")
    result = {"config": config(args), "runs": runs, "fanout": fanout}
    print(json.dumps(report(args, health, result)))


def config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "clients": args.clients,
        "seconds": args.seconds,
        "k": args.k,
        "bad_every": args.bad_every,
        "workers": args.workers,
        "transport": "HTTP/1.1 keep-alive over 127.0.0.1, multipart uploads",
        **({"ray": args.ray, "fanout_clients": args.fanout_clients} if args.ray else {}),
    }


def report(args: argparse.Namespace, health: dict[str, Any], result: dict[str, Any]) -> dict:
    return {
        "benchmark": "service" if args.ray is None else "service_on_ray",
        "index": {
            "dir": str(args.index_dir),
            "count": health["count"],
            "model": health["model"],
            "dim": health["dim"],
        },
        **result,
        "machine": machine(),
    }


def measure(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    """Start ``server``, load it for ``args.seconds`` with ``args.clients`` clients, stop it."""
    with server as srv:
        health = srv.health
        pngs = fetch_catalog_pngs(srv.url, args.images)
        rss_before = srv.rss_mib()
        cpu_before = srv.cpu_seconds()
        load = run_load(srv.url, pngs, args, health["max_upload_bytes"])
        server_cpu = srv.cpu_seconds() - cpu_before
        time.sleep(0.5)
        rss_after = srv.rss_mib()
        alive = httpx.get(f"{srv.url}/api/health", timeout=10).json()["status"] == "ok"
    requests = max(1, load["good"]["count"] + load["malformed"]["count"])
    # With --ray local: every process of the cluster (Serve's proxy and controller, the
    # replicas, raylets, GCS) and the `serve --ray` process; on a remote cluster: not measured.
    measured = server.ray != "remote"
    return {
        "server": " ".join(["simsearch serve", *server.args]),
        "health": health,
        "distinct_images": len(pngs),
        **load,
        "server_cpu_ms_per_request": round(1000 * server_cpu / requests, 2) if measured else None,
        "server_alive_after": alive,
        "server_rss_mib": {"before": rss_before, "after": rss_after} if measured else None,
    }


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


@contextmanager
def ray_cluster(address: str) -> Iterator[str]:
    """``address`` as given, or with ``local`` a head and one worker node (2 CPUs each) started
    here (and stopped after)."""
    if address != "local":
        yield address
        return
    import ray
    from ray.cluster_utils import Cluster

    repo = str(Path(__file__).resolve().parents[1])  # the nodes import simsearch from here
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2}, connect=False)
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def sharded_copy(source: Path, target: Path, shards: int) -> Path:
    """The index at ``source`` saved at ``target`` with its FAISS index cut into ``shards``
    shards of the same type and parameters (consecutive rows)."""
    from simsearch import SearchIndex, vector_index

    index = SearchIndex.load(source)
    conf = index.manifest["index"]
    sizes = vector_index.shard_sizes(len(index), shards)
    searcher = vector_index.build_shards(index.vectors, conf["type"], conf["params"], sizes)
    SearchIndex(
        encoder=index.encoder,
        encoder_file=index.encoder_file,
        vectors=index.vectors,
        ids=index.ids,
        labels=index.labels,
        sources=index.sources,
        images=index.images,
        manifest=index.manifest,
        extra_files=index.extra_files,
        searcher=searcher,
    ).save(target)
    return target


# ---------------------------------------------------------------------- the server


class Server:
    """`simsearch serve ARGS` in a subprocess on a free loopback port (``ray``: it serves on a
    Ray cluster started by this script, "local", or elsewhere, "remote"; up once it says so)."""

    def __init__(self, index_dir: Path, args: list[str], tmp: str, ray: str | None = None) -> None:
        self.index_dir, self.args, self.ray = index_dir, args, ray
        self.log_path = Path(tmp) / "serve.log"

    def __enter__(self) -> Server:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "simsearch.cli", "serve", "--index-dir"]
        command += [str(self.index_dir), "--port", str(port), *self.args]
        self.log = open(self.log_path, "wb")  # closed in __exit__
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited:\n{self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise SystemExit("the server did not answer within 300 s")
            try:
                ready = not self.ray or b"serving " in self.log_path.read_bytes()
                response = httpx.get(f"{self.url}/api/health", timeout=2)
                if ready and response.status_code == 200 and response.json()["status"] == "ok":
                    self.health = response.json()
                    return self
            except httpx.HTTPError:
                pass  # not listening yet (Ray Serve's proxy answers 404/503 until the app is up)
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def _pids(self) -> list[int]:
        if self.ray == "local":  # the cluster's processes are this script's children too
            return [pid for pid in _process_tree(os.getpid()) if pid != os.getpid()]
        return _process_tree(self.process.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process and its children so far."""
        ticks = 0
        for pid in self._pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        """VmRSS of the server process and its children (the workers), in MiB."""
        total_kib = 0
        for pid in self._pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        return round(total_kib / 1024, 1)


def _process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            todo += [int(child) for child in task.read_text().split()]
    return pids


# ---------------------------------------------------------------------- the load


def fetch_catalog_pngs(url: str, n: int) -> list[bytes]:
    """n random catalog items, exported as PNG by the server itself."""
    pngs = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(n):
            item = client.get("/api/items/random").json()
            response = client.get(item["image_url"])
            response.raise_for_status()
            pngs.append(response.content)
    return pngs


def malformed_uploads(max_upload_bytes: int, png: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(kind, httpx request arguments) for each kind of malformed upload."""
    return [
        ("not_an_image", {"files": {"image": ("notes.txt", b"hello, this is text")}}),
        ("truncated_png", {"files": {"image": ("cut.png", png[: len(png) // 2])}}),
        ("empty_file", {"files": {"image": ("empty.png", b"")}}),
        ("wrong_field", {"files": {"picture": ("a.png", png)}}),
        ("k_out_of_range", {"files": {"image": ("a.png", png)}, "params": {"k": 5000}}),
        ("over_limit", {"files": {"image": ("big.png", bytes(max_upload_bytes + 1))}}),
    ]


def run_load(url: str, pngs: list[bytes], args: argparse.Namespace, max_upload: int) -> dict:
    bad_kinds = malformed_uploads(max_upload, pngs[0])
    lock = threading.Lock()
    counter = iter(range(args.max_requests))
    latencies: list[float] = []
    good_errors: Counter[str] = Counter()
    wrong_top1 = 0
    bad_statuses: dict[str, Counter[str]] = {kind: Counter() for kind, _ in bad_kinds}
    deadline = time.monotonic() + args.seconds

    def client() -> None:
        nonlocal wrong_top1
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                if i % args.bad_every == args.bad_every - 1:
                    kind, request = bad_kinds[(i // args.bad_every) % len(bad_kinds)]
                    try:
                        status = str(http.post("/api/search", **request).status_code)
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    with lock:
                        bad_statuses[kind][status] += 1
                    continue
                png = pngs[i % len(pngs)]
                started = time.perf_counter()
                try:
                    response = http.post(
                        "/api/search", params={"k": args.k}, files={"image": ("q.png", png)}
                    )
                    elapsed = time.perf_counter() - started
                    error = None if response.status_code == 200 else str(response.status_code)
                    results = response.json()["results"] if error is None else []
                    if error is None and len(results) != args.k:
                        error = "wrong_count"
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    error, elapsed, results = type(exc).__name__, 0.0, []
                with lock:
                    if error:
                        good_errors[error] += 1
                    else:
                        latencies.append(elapsed)
                        # A catalog item's own PNG must find an identical image first.
                        wrong_top1 += results[0]["similarity"] < 0.9999

    started = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.seconds + 120)
    wall = time.monotonic() - started

    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    bad_total = sum(sum(c.values()) for c in bad_statuses.values())
    return {
        "wall_seconds": round(wall, 2),
        "requests_per_s": round((len(latencies) + sum(good_errors.values()) + bad_total) / wall, 1),
        "good": {
            "count": len(latencies),
            "requests_per_s": round(len(latencies) / wall, 1),
            "errors": sum(good_errors.values()),
            "error_kinds": dict(good_errors),
            "top1_not_identical": int(wrong_top1),
            "latency_ms": {
                "p50": round(float(np.percentile(ms, 50)), 2),
                "p90": round(float(np.percentile(ms, 90)), 2),
                "p99": round(float(np.percentile(ms, 99)), 2),
                "max": round(float(ms.max()), 2),
            },
        },
        "malformed": {
            "count": bad_total,
            "statuses": dict(sum(bad_statuses.values(), Counter())),
            "by_kind": {kind: dict(c) for kind, c in bad_statuses.items()},
        },
    }


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
        "gpu": None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "note": "client and server share the machine's CPUs",
    }


if __name__ == "__main__":
    main()
