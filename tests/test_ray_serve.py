"""``simsearch serve --ray`` on a real Ray cluster started here (``ray.cluster_utils.Cluster``: a
head and two worker nodes, one CPU each): the same JSON as plain ``serve`` from the whole index
and from a 4-shard index, the same error statuses, new versions followed and broken ones
skipped, a shard that cannot load reported, replicas killed under load, Ctrl-C leaving nothing.

The plain ``serve`` side is the same app in this process (``create_app`` under TestClient).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from simsearch import SearchIndex, vector_index
from simsearch.cli import app as cli_app
from simsearch.ray_serve import REQUEST_TIMEOUT
from simsearch.server import create_app
from tests.conftest import ray_or_skip, with_index_type

ray = ray_or_skip()
REPO = Path(__file__).parents[1]
MAX_UPLOAD = 60_000  # small, so that the 413 case sends little
CLIENTS = 4
PARAMS: list[dict[str, Any]] = [
    {"k": 10},
    {"k": 1},
    {"k": 50},
    {"k": 10, "label": ["Sandal", "Bag"]},
    {"k": 10, "id_prefix": "fashion-mnist/train/002"},
    {"k": 20, "min_similarity": 0.9},
]


# ---------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def whole_dir(tmp_path_factory: pytest.TempPathFactory, pca_index_dir: Path) -> Path:
    """A copy of the fake catalog's index (one flat FAISS index)."""
    directory = tmp_path_factory.mktemp("whole") / "index"
    shutil.copytree(pca_index_dir, directory)
    return directory


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory: pytest.TempPathFactory, pca_index_dir: Path) -> Path:
    """The same catalog as a 4-shard HNSW index."""
    return sharded_copy(pca_index_dir, tmp_path_factory.mktemp("sharded") / "index", 4)


def sharded_copy(source: Path, target: Path, shards: int, kind: str = "hnsw") -> Path:
    """The index at ``source`` saved at ``target`` with its vectors in ``shards`` shards."""
    index = SearchIndex.load(source)
    params = vector_index.default_params(kind, len(index))
    sizes = vector_index.shard_sizes(len(index), shards)
    copy = with_index_type(
        index,
        kind,
        params,
        extra_files=index.extra_files,
        searcher=vector_index.build_shards(index.vectors, kind, params, sizes),
    )
    copy.save(target)
    return target


@pytest.fixture(scope="module")
def queries(pca_index_dir: Path) -> list[tuple[str, bytes]]:
    """Catalog items as PNG files, and one as a phone-like photo (large, RGB, JPEG, on a
    gradient) that preprocessing has work to do on."""
    index = SearchIndex.load(pca_index_dir)
    found = [(f"item{i}.png", index.item_png(str(index.ids[i]))) for i in (0, 7, 123, 399)]
    pixels = Image.fromarray(index.item_pixels(str(index.ids[7]))).resize((300, 300))
    background = np.linspace(20, 90, 300, dtype=np.uint8)[None, :].repeat(300, axis=0)
    photo = np.maximum(np.asarray(pixels), background)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([photo, photo, photo * 0.9], axis=-1).astype(np.uint8)).save(
        buffer, format="JPEG", quality=85
    )
    return [*found, ("photo.jpg", buffer.getvalue())]


class Service:
    """A layout deployed on the cluster, next to the same app served in this process."""

    def __init__(self, index_dir: Path, url: str) -> None:
        self.index_dir = index_dir
        self.ray = httpx.Client(base_url=url, timeout=60)
        app = create_app(index_dir, max_upload_bytes=MAX_UPLOAD)
        self.plain = TestClient(app, base_url="http://localhost")

    def both(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, httpx.Response]:
        return self.plain.request(method, path, **kwargs), self.ray.request(method, path, **kwargs)

    def search(self, png: bytes, **params: Any) -> httpx.Response:
        return self.ray.post("/api/search", files={"image": ("q.png", png)}, params=params)


@contextmanager
def deployed(cluster: Any, index_dir: Path, port: int, replicas: int) -> Iterator[Service]:
    from simsearch import ray_serve

    service = ray_serve.deploy(
        index_dir, cluster.address, replicas, port=port, max_upload_bytes=MAX_UPLOAD
    )
    try:
        yield Service(index_dir, service.url)
    finally:
        service.stop()


def without_timing(content: bytes) -> bytes:
    return re.sub(rb'"took_ms":[0-9.]+', b'"took_ms":0', content)


def assert_same_answers(service: Service, queries: list[tuple[str, bytes]]) -> None:
    """Byte-identical JSON (but for the time taken) for every query and parameter set."""
    for name, data in queries:
        for params in PARAMS:
            plain, there = service.both(
                "POST", "/api/search", files={"image": (name, data)}, params=params
            )
            assert plain.status_code == there.status_code == 200, (params, there.text)
            assert without_timing(there.content) == without_timing(plain.content), (name, params)


def assert_same_errors(service: Service, png: bytes) -> None:
    cases: list[tuple[int, str, str, dict[str, Any]]] = [
        (400, "POST", "/api/search", {"json": {"image": "x"}}),
        (400, "POST", "/api/search", {"files": {"picture": ("a.png", png)}}),
        (413, "POST", "/api/search", {"files": {"image": ("big.png", bytes(MAX_UPLOAD + 1))}}),
        (422, "POST", "/api/search", {"files": {"image": ("notes.txt", b"hello, text")}}),
        (422, "POST", "/api/search", {"files": {"image": ("a.png", png)}, "params": {"k": 5000}}),
        (
            422,
            "POST",
            "/api/search",
            {"files": {"image": ("a.png", png)}, "params": {"label": "X"}},
        ),
        (404, "GET", "/api/items/no/such/item/image", {}),
        (404, "GET", "/api/nothing/here", {}),
    ]
    for status, method, path, kwargs in cases:
        plain, there = service.both(method, path, **kwargs)
        assert (plain.status_code, there.status_code) == (status, status), (path, kwargs)
        assert there.content == plain.content
        assert list(there.json()) == ["error"]


def replica_names(deployment: str) -> list[str]:
    """The live replica actors of one deployment of the application."""
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(
        n["name"] for n in names if n["name"].startswith(f"SERVE_REPLICA::simsearch#{deployment}#")
    )


def kill_replica(deployment: str) -> str:
    name = replica_names(deployment)[0]
    ray.kill(ray.get_actor(name, namespace="serve"))
    return name


def outcome(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "ok" if len(response.json()["results"]) == 5 else "wrong count"
    if response.status_code == 503 and response.headers.get("retry-after"):
        body = response.json()
        if list(body) == ["error"]:
            return "503 json"
    return f"{response.status_code} {response.headers.get('content-type')} {response.text[:60]}"


def load_with_a_kill(url: str, png: bytes, kill: Callable[[], object]) -> Counter[str]:
    """CLIENTS clients search for 12 s; one replica is killed after 3 s. Every request gets an
    answer before the clients' own timeout (a hang would show as ReadTimeout): at worst the
    proxy's 408 after REQUEST_TIMEOUT."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + 12

    def client() -> None:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT + 30) as http:
            while time.monotonic() < stop:
                try:
                    kind = outcome(
                        http.post("/api/search", files={"image": ("q.png", png)}, params={"k": 5})
                    )
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                with lock:
                    outcomes[kind] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    kill()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT + 60)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    return outcomes


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds:g} s: {what}")
        time.sleep(0.5)


def all_succeed(service: Service, png: bytes, n: int = 20) -> bool:
    return all(service.search(png, k=5).status_code == 200 for _ in range(n))


# ---------------------------------------------------------------------- whole-index replicas


@pytest.mark.slow
class TestWholeIndex:
    @pytest.fixture(scope="class")
    def service(self, cluster: Any, whole_dir: Path, port: int) -> Iterator[Service]:
        with deployed(cluster, whole_dir, port, replicas=2) as service:
            yield service

    def test_same_json_as_plain_serve(
        self, service: Service, queries: list[tuple[str, bytes]]
    ) -> None:
        assert len(replica_names("app")) == 2
        assert_same_answers(service, queries)
        plain, there = service.both("GET", "/api/health")
        assert there.json() == plain.json() and there.json()["status"] == "ok"
        for path in ("/", "/api/items/fashion-mnist/train/00007/image", "/static/app.js"):
            plain, there = service.both("GET", path)
            assert there.status_code == 200 and there.content == plain.content

    def test_same_errors(self, service: Service, queries: list[tuple[str, bytes]]) -> None:
        assert_same_errors(service, queries[0][1])

    def test_replica_killed_under_load(
        self, service: Service, queries: list[tuple[str, bytes]]
    ) -> None:
        png = queries[1][1]
        outcomes = load_with_a_kill(str(service.ray.base_url), png, lambda: kill_replica("app"))
        # The other replica answers throughout. A request that was inside the killed replica
        # gets Ray Serve's own answer from its proxy (a plain-text 500, or its 408 when Ray
        # never tells the proxy the replica died): at most one per client.
        lost = outcomes.pop("500 text/plain; charset=utf-8 Internal Server Error", 0)
        lost += sum(outcomes.pop(kind) for kind in list(outcomes) if kind.startswith("408 "))
        assert set(outcomes) <= {"ok", "503 json"} and outcomes["ok"] > 20, outcomes
        assert lost <= CLIENTS, outcomes
        wait_for(lambda: len(replica_names("app")) == 2, 60, "the replica restarted")
        assert all_succeed(service, png)


# ---------------------------------------------------------------------- a sharded index


@pytest.mark.slow
class TestShardedIndex:
    @pytest.fixture(scope="class")
    def service(self, cluster: Any, sharded_dir: Path, port: int) -> Iterator[Service]:
        with deployed(cluster, sharded_dir, port, replicas=1) as service:
            yield service

    def test_same_json_as_plain_serve(
        self, service: Service, queries: list[tuple[str, bytes]]
    ) -> None:
        assert [len(replica_names(f"shard-{i:03d}")) for i in range(4)] == [1, 1, 1, 1]
        assert_same_answers(service, queries)
        plain, there = service.both("GET", "/api/health")
        assert there.json() == plain.json() and there.json()["status"] == "ok"

    def test_same_errors(self, service: Service, queries: list[tuple[str, bytes]]) -> None:
        assert_same_errors(service, queries[0][1])

    def test_a_shard_that_cannot_load_is_reported(
        self, service: Service, sharded_dir: Path, queries: list[tuple[str, bytes]]
    ) -> None:
        manifest = json.loads((sharded_dir / "manifest.json").read_text())
        shard_file = sharded_dir / manifest["files"]["index-002.faiss"]["path"]
        hidden = shard_file.with_name("elsewhere")
        shard_file.rename(hidden)  # as if shard 2's node had lost the storage
        try:
            kill_replica("shard-002")  # its replacement cannot load the file

            def degraded() -> bool:
                health = service.ray.get("/api/health").json()
                return health["status"] == "degraded" and list(health["unavailable"]) == ["shard 2"]

            wait_for(degraded, 60, "health says shard 2 is unavailable")
            response = service.search(queries[0][1], k=5)
            assert outcome(response) == "503 json" and "shard 2" in response.json()["error"]
            assert service.ray.get("/api/items/random").status_code == 200  # the rest serves
        finally:
            hidden.rename(shard_file)
        wait_for(lambda: service.ray.get("/api/health").json()["status"] == "ok", 60, "ok again")
        assert_same_answers(service, queries[:2])

    def test_follows_new_versions_and_skips_broken_ones(
        self, service: Service, sharded_dir: Path, queries: list[tuple[str, bytes]]
    ) -> None:
        new = np.zeros((28, 28), np.uint8)
        new[4:24, 12:16] = new[12:16, 4:24] = 255  # a cross: like nothing in the catalog
        buffer = io.BytesIO()
        Image.fromarray(new).save(buffer, format="PNG")
        index = SearchIndex.load(sharded_dir)
        index.add([buffer.getvalue()], ["shop/new-cross"])
        index.save(sharded_dir)  # goes into the last shard

        def top_is_new() -> bool:
            results = service.search(buffer.getvalue(), k=3).json()["results"]
            return results[0]["id"] == "shop/new-cross"

        wait_for(top_is_new, 60, "the new version is served")
        assert service.ray.get("/api/health").json()["count"] == 401
        assert_same_answers(service, [*queries, ("cross.png", buffer.getvalue())])

        # A version whose shard 1 file is corrupt: the shard cannot load it, so it is skipped.
        good = (sharded_dir / "manifest.json").read_bytes()
        staging = sharded_dir.parent / "staging"
        shutil.copytree(sharded_dir, staging)
        index = SearchIndex.load(staging)
        index.remove(["shop/new-cross"])
        index.save(staging)
        manifest = json.loads((staging / "manifest.json").read_text())
        generation = manifest["files"]["index-001.faiss"]["path"].split("/")[0]
        shard_file = staging / manifest["files"]["index-001.faiss"]["path"]
        data = bytearray(shard_file.read_bytes())
        data[-8:] = bytes(8)
        shard_file.write_bytes(bytes(data))
        shutil.copytree(staging / generation, sharded_dir / generation)
        os.replace(staging / "manifest.json", sharded_dir / "manifest.json")
        try:
            time.sleep(4)  # several reload checks
            health = service.ray.get("/api/health").json()
            assert health["status"] == "ok" and health["count"] == 401
            assert top_is_new()
            assert_same_answers(service, queries[:2])
        finally:
            (sharded_dir / "manifest.json").write_bytes(good)

    def test_the_page_works_against_the_cluster(
        self, service: Service, queries: list[tuple[str, bytes]], tmp_path: Path
    ) -> None:
        from tests.test_web_page import (
            ALL_THUMBNAILS_LOADED,
            CHROMIUM,
            CHROMIUM_ARGS,
            _browser_or_skip,
            _hits,
        )

        _browser_or_skip()
        from playwright.sync_api import sync_playwright

        item = tmp_path / "item7.png"
        item.write_bytes(queries[1][1])
        url = str(service.ray.base_url).rstrip("/")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                # the cluster's replicas share two cores with the browser and the rest of the suite
                page.set_default_timeout(60_000)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(url + "/")
                count = service.ray.get("/api/health").json()["count"]
                page.wait_for_function(
                    f"document.querySelector('#status').textContent.includes('{count:,}')"
                )
                page.set_input_files("#file", str(item))
                page.wait_for_function(ALL_THUMBNAILS_LOADED)
                hits = _hits(page)
                assert len(hits) == 10 and hits[0][0] == "#1" and hits[0][2] == "1.000"
                page.click("#random")
                page.wait_for_function(
                    "document.querySelector('#query-name').textContent.startsWith('fashion-mnist/')"
                )
                page.wait_for_function(ALL_THUMBNAILS_LOADED)
                assert _hits(page)[0][2] == "1.000" and not errors
            finally:
                browser.close()

    def test_shard_replica_killed_under_load(
        self, service: Service, queries: list[tuple[str, bytes]]
    ) -> None:
        png = queries[1][1]
        outcomes = load_with_a_kill(
            str(service.ray.base_url), png, lambda: kill_replica("shard-001")
        )
        # Until the shard is back, searches answer a JSON 503 (never a partial result).
        assert set(outcomes) <= {"ok", "503 json"} and outcomes["ok"] > 20, outcomes
        wait_for(lambda: len(replica_names("shard-001")) == 1, 60, "the shard restarted")
        wait_for(lambda: service.ray.get("/api/health").json()["status"] == "ok", 60, "ok")
        assert all_succeed(service, png)


# ---------------------------------------------------------------------- the command


@pytest.mark.slow
def test_cli_serves_until_ctrl_c_and_leaves_no_actors(
    cluster: Any, whole_dir: Path, port: int, queries: list[tuple[str, bytes]]
) -> None:
    command = [sys.executable, "-m", "simsearch.cli", "serve", "--ray", cluster.address]
    command += ["--index-dir", str(whole_dir), "--port", str(port), "--replicas", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stderr or ()), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: any("serving" in line for line in lines), 120, "serve --ray is up")
        serving = next(line for line in lines if "serving" in line)
        assert serving.startswith(f"serving 400 items from {whole_dir} on the Ray cluster at")
        assert f" at {url}/ " in serving
        with TestClient(create_app(whole_dir), base_url="http://localhost") as plain:
            for name, data in queries[:2]:
                files = {"image": (name, data)}
                there = httpx.post(f"{url}/api/search", files=files, timeout=60)
                here = plain.post("/api/search", files=files)
                assert without_timing(there.content) == without_timing(here.content)
    finally:
        server.send_signal(signal.SIGINT)
        code = server.wait(150)  # STOP_TIMEOUT, then killing what is left
        reader.join(10)
    assert code == 0, "".join(lines)
    assert "stopping: removing the application from the cluster\n" in lines
    assert not [line for line in lines if "Traceback" in line]
    from simsearch import ray_serve

    ray_serve.connect(cluster.address)
    left = [n["name"] for n in ray.util.list_named_actors(all_namespaces=True)]
    assert not [name for name in left if name.startswith("SERVE_")], left


def test_unreachable_cluster_is_one_line(whole_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    args = ["serve", "--ray", address, "--index-dir", str(whole_dir)]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"error: cannot reach a Ray cluster at {address}: Connection refused"
    ]


def test_options_that_need_or_exclude_ray(whole_dir: Path) -> None:
    base = ["serve", "--index-dir", str(whole_dir)]
    for args, message in (
        (["--replicas", "2"], "error: --replicas needs --ray (on one machine use --workers)"),
        (
            ["--ray", "auto", "--workers", "2"],
            "error: --workers and --forwarded-allow-ips do not apply with --ray",
        ),
    ):
        result = CliRunner().invoke(cli_app, base + args)
        assert (result.exit_code, result.output.strip()) == (1, message)


def test_plain_serve_never_imports_ray(pca_index_dir: Path) -> None:
    code = (
        "import json, sys\n"
        "from simsearch.server import create_app\n"
        f"create_app({str(pca_index_dir)!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'ray')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
