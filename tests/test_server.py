"""The HTTP service: every endpoint and every error, with TestClient and with a live server."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from simsearch.cli import app as cli_app
from simsearch.images import preprocess_views
from simsearch.search_index import SearchIndex
from simsearch.server import STATIC_DIR, create_app

HIT_FIELDS = ["rank", "id", "label", "label_name", "similarity", "distance", "source"]
ITEM = "fashion-mnist/train/00007"
LOCAL = "http://localhost"  # a Host the app answers to by default (TestClient says "testserver")


@pytest.fixture(scope="module")
def index(pca_index_dir: Path) -> SearchIndex:
    return SearchIndex.load(pca_index_dir)


@pytest.fixture(scope="module")
def client(index: SearchIndex) -> Iterator[TestClient]:
    with TestClient(create_app(index), base_url=LOCAL) as test_client:
        yield test_client


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, fragment: str = "") -> str:
    """The response is exactly {"error": "<one line>"} with this status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"]
    assert fragment.lower() in body["error"].lower()
    return str(body["error"])


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free loopback port; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# ---------------------------------------------------------------------- health, page, docs


def test_health(client: TestClient, index: SearchIndex) -> None:
    body = client.get("/api/health").json()
    assert body["status"] == "ok"
    assert body["count"] == len(index) == 400
    assert body["dim"] == index.dim


def test_page_and_its_assets_are_served_locally(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {"static/app.js", "static/style.css"} <= set(assets)
    for asset in assets:
        assert client.get("/" + asset).status_code == 200, asset
    # No CDN, no font service: nothing in the page's files points off this server.
    for path in STATIC_DIR.iterdir():
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), path.name


def test_docs_are_served_offline(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        urls += re.findall(r"url: '([^']+)'", html.text)
        assert urls, page
        for url in urls:
            assert url.startswith("/"), f"{page} loads {url} from elsewhere"
            assert client.get(url).status_code == 200, url
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert "image" in body["multipart/form-data"]["schema"]["properties"]
    # Documented error bodies are the real ones, not FastAPI's {"detail": ...}.
    assert "HTTPValidationError" not in json.dumps(spec)


# ---------------------------------------------------------------------- search


def test_search_returns_the_cli_json_hits(
    client: TestClient, item_png: Path, pca_index_dir: Path
) -> None:
    response = client.post(
        "/api/search?k=5", files={"image": ("item7.png", item_png.read_bytes(), "image/png")}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == "item7.png"
    assert body["k"] == 5
    hits = body["results"]
    assert [list(hit) for hit in hits] == [HIT_FIELDS] * 5
    assert [hit["rank"] for hit in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["id"] == ITEM and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-5)

    cli = CliRunner().invoke(
        cli_app, ["query", str(item_png), "-k", "5", "--json", "--index-dir", str(pca_index_dir)]
    )
    assert cli.exit_code == 0, cli.output
    assert hits == json.loads(cli.stdout)["results"]


def test_search_returns_the_query_as_the_model_sees_it(client: TestClient) -> None:
    image = Image.new("RGB", (90, 60), "white")
    image.paste((200, 30, 30), (20, 10, 70, 50))  # a red block on white: gets re-framed
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    response = client.post("/api/search", files={"image": ("red.jpg", buffer.getvalue())})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["results"]) == 10  # default k
    prefix = "data:image/png;base64,"
    assert body["query_image"].startswith(prefix)
    seen = Image.open(io.BytesIO(base64.b64decode(body["query_image"][len(prefix) :])))
    assert seen.size == (28, 28)
    # the framing of the photo that matched the first hit (see images.preprocess_views)
    views = preprocess_views(buffer.getvalue())
    shown = views.names.index(body["query_framing"])
    np.testing.assert_array_equal(np.asarray(seen), views.pixels[shown])


def test_search_accepts_a_raw_image_body(client: TestClient, item_png: Path) -> None:
    response = client.post(
        "/api/search?k=2", content=item_png.read_bytes(), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["id"] == ITEM


@pytest.mark.parametrize("k", ["0", "-1", "1001", "ten", "2.5"])
def test_k_out_of_range_is_422(client: TestClient, item_png: Path, k: str) -> None:
    files = {"image": ("a.png", item_png.read_bytes())}
    assert_error(client.post(f"/api/search?k={k}", files=files), 422, "k:")


def test_k_up_to_1000_is_capped_by_the_catalog(client: TestClient, item_png: Path) -> None:
    files = {"image": ("a.png", item_png.read_bytes())}
    response = client.post("/api/search?k=1000", files=files)
    assert response.status_code == 200
    assert len(response.json()["results"]) == 400  # every item of the small catalog


def test_search_filters_and_thresholds(
    client: TestClient, index: SearchIndex, item_png: Path
) -> None:
    files = {"image": ("item7.png", item_png.read_bytes())}
    name = index.label_name_of(7)
    same = client.post("/api/search", params={"k": 5, "label": [name, "0"]}, files=files)
    assert same.status_code == 200, same.text
    results = same.json()["results"]
    assert len(results) == 5 and {r["label"] for r in results} <= {index.label_of(7), 0}
    assert results[0]["id"] == ITEM and results[0]["similarity"] == 1.0
    none = client.post("/api/search?k=5&id_prefix=nothing/", files=files)
    assert none.status_code == 200 and none.json()["results"] == []
    close = client.post("/api/search?k=50&min_similarity=0.99", files=files).json()["results"]
    assert 1 <= len(close) < 50 and all(r["similarity"] >= 0.99 for r in close)
    assert client.post("/api/search?k=50&max_distance=0.01", files=files).json()["results"] == close
    assert_error(client.post("/api/search?label=Sock", files=files), 422, "unknown label")
    assert_error(client.post("/api/search?min_similarity=2", files=files), 422, "min_similarity")


def _truncated_png() -> bytes:
    return png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))[:200]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("notes.txt", b"this is not an image at all"),
        ("empty.png", b""),
        ("truncated.png", _truncated_png()),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + bytes(100)),
        ("blank.png", png_bytes(np.zeros((28, 28), np.uint8))),
    ],
)
def test_unusable_images_are_422(client: TestClient, name: str, data: bytes) -> None:
    response = client.post("/api/search", files={"image": (name, data)})
    assert_error(response, 422, name)


def test_malformed_requests_are_400(client: TestClient, item_png: Path) -> None:
    data = item_png.read_bytes()
    assert_error(client.post("/api/search", files={"picture": ("a.png", data)}), 400, "image")
    assert_error(client.post("/api/search", data={"image": "a.png"}), 400)
    assert_error(client.post("/api/search", json={"image": "a.png"}), 400)
    no_boundary = {"content-type": "multipart/form-data"}
    assert_error(client.post("/api/search", content=data, headers=no_boundary), 400)


def test_uploads_over_the_limit_are_413(index: SearchIndex, item_png: Path) -> None:
    small = item_png.read_bytes()
    limit = len(small) + 10
    with TestClient(create_app(index, max_upload_bytes=limit), base_url=LOCAL) as client:
        assert client.post("/api/search", files={"image": ("a.png", small)}).status_code == 200
        big = small + bytes(100)
        assert_error(client.post("/api/search", files={"image": ("a.png", big)}), 413, "limit")
        assert_error(client.post("/api/search", content=big), 413)
        # Chunked: no Content-Length to check up front, the limit applies while reading.
        chunks = (bytes(1000) for _ in range(100))
        assert_error(client.post("/api/search", content=chunks), 413)
        assert client.get("/api/health").status_code == 200


def test_upload_limit_is_enforced_before_the_body_is_read(index: SearchIndex) -> None:
    """A live server answers 413 while the client is still sending: it never waits for (or
    buffers) the rest of an oversized body."""
    with live_server(create_app(index, max_upload_bytes=100_000)) as url:
        port = int(url.rsplit(":", 1)[1])
        declared = (
            "POST /api/search HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 1000000000\r\n\r\n"
        )
        chunked = (
            "POST /api/search HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"10000\r\n" + bytes(0x10000) + b"\r\n"  # 64 KiB per chunk, never terminated
        for head, body in [(declared, bytes(10_000)), (chunked, chunk * 3)]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(head.encode() + body)
                answer = _read_response(sock)
            assert answer.startswith("HTTP/1.1 413"), answer[:200]
            assert answer.endswith('"}') and '{"error":' in answer


def _read_response(sock: socket.socket) -> str:
    """One HTTP/1.1 response with a Content-Length, read from a raw socket."""
    data = b""

    def more() -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        return chunk

    while b"\r\n\r\n" not in data:
        data += more()
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    assert match, head
    while len(body) < int(match.group(1)):
        body += more()
    return (head + b"\r\n\r\n" + body).decode("latin-1")


# ---------------------------------------------------------------------- items


def test_item_image_is_the_catalog_png(client: TestClient, index: SearchIndex) -> None:
    response = client.get(f"/api/items/{ITEM}/image")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == index.item_png(ITEM)
    pixels = np.asarray(Image.open(io.BytesIO(response.content)))
    np.testing.assert_array_equal(pixels, index.item_pixels(ITEM))


@pytest.mark.parametrize(
    "item_id", ["fashion-mnist/train/99999", "nope", "fashion-mnist/train", "a%20b/c"]
)
def test_unknown_item_is_404(client: TestClient, item_id: str) -> None:
    assert_error(client.get(f"/api/items/{item_id}/image"), 404, "no item")


def test_random_item(client: TestClient, index: SearchIndex) -> None:
    seen = set()
    for _ in range(20):
        item = client.get("/api/items/random").json()
        row = index.row_of(item["id"])
        assert item["label"] == index.label_of(row)
        assert item["label_name"] == index.label_name_of(row)
        assert client.get(item["image_url"]).content == index.item_png(item["id"])
        seen.add(item["id"])
    assert len(seen) > 1


def test_unknown_paths_and_methods_are_json(client: TestClient) -> None:
    assert_error(client.get("/api/nothing"), 404)
    assert_error(client.get("/static/nothing.js"), 404)
    assert_error(client.delete("/api/health"), 405)
    assert_error(client.get("/api/search"), 405)


def test_a_bug_is_a_json_500_and_the_server_keeps_serving(
    pca_index_dir: Path, item_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = SearchIndex.load(pca_index_dir)

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(broken, "query_detail", explode)
    with TestClient(create_app(broken), base_url=LOCAL, raise_server_exceptions=False) as client:
        response = client.post("/api/search", files={"image": ("a.png", item_png.read_bytes())})
        assert_error(response, 500, "internal")
        assert "boom" not in response.text
        assert client.get("/api/health").json()["status"] == "ok"


# ---------------------------------------------------------------------- concurrency


def test_bad_clients_do_not_disturb_good_ones(index: SearchIndex) -> None:
    """Good and malformed uploads in parallel against a live server: every good request gets
    the right answer, every bad one its own 4xx."""
    good = [(row, png_bytes(index.images[row])) for row in range(0, 400, 50)]
    expected = {row: index.query_pixels(index.images[row][None], 3)[0][0].id for row, _ in good}
    bad = [
        (b"not an image", 422),
        (_truncated_png(), 422),
        (png_bytes(np.zeros((28, 28), np.uint8)), 422),
        (bytes(300_000), 413),
    ]
    failures: list[str] = []

    def good_client(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(4):
                for row, data in good:
                    r = http.post("/api/search?k=3", files={"image": ("g.png", data)})
                    if r.status_code != 200 or r.json()["results"][0]["id"] != expected[row]:
                        failures.append(f"good row {row}: {r.status_code} {r.text[:100]}")

    def bad_client(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(4):
                for data, status in bad:
                    r = http.post("/api/search", files={"image": ("b.png", data)})
                    if r.status_code != status or list(r.json()) != ["error"]:
                        failures.append(f"bad upload: {r.status_code} {r.text[:100]}")

    with live_server(create_app(index, max_upload_bytes=200_000)) as url:
        threads = [threading.Thread(target=good_client, args=(url,)) for _ in range(4)]
        threads += [threading.Thread(target=bad_client, args=(url,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert httpx.get(f"{url}/api/health").json()["count"] == 400
    assert not failures, failures[:5]


# ---------------------------------------------------------------------- the serve command


def test_serve_without_an_index_fails_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--index-dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "none" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_health(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            return dict(httpx.get(f"{url}/api/health", timeout=2).json())
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"no answer from {url} within {timeout} s")


@contextmanager
def serve_process(index_dir: Path, *args: str) -> Iterator[str]:
    """``simsearch serve`` in a subprocess on a free loopback port; yields the base URL."""
    with serve_subprocess(index_dir, *args) as (url, _):
        yield url


@contextmanager
def serve_subprocess(index_dir: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``simsearch serve`` in a subprocess on a free loopback port; yields (base URL, process)."""
    port = free_port()
    command = [sys.executable, "-m", "simsearch.cli", "serve", "--index-dir", str(index_dir)]
    command += ["--port", str(port), *args]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_serve_with_workers_loads_the_index_in_each(pca_index_dir: Path, item_png: Path) -> None:
    with serve_process(pca_index_dir, "--workers", "2", "--max-upload-mb", "0.01") as url:
        assert httpx.get(f"{url}/api/health").json()["count"] == 400
        files = {"image": ("a.png", item_png.read_bytes())}
        for _ in range(4):
            hits = httpx.post(f"{url}/api/search?k=1", files=files, timeout=30).json()["results"]
            assert hits[0]["id"] == ITEM
        big = {"image": ("a.png", bytes(20_000))}
        assert httpx.post(f"{url}/api/search", files=big).status_code == 413


def test_server_follows_add_and_remove(pca_index_dir: Path, tmp_path: Path) -> None:
    """A change saved by another process is served on the next request, a broken one is not."""
    import shutil

    directory = tmp_path / "live"
    shutil.copytree(pca_index_dir, directory)
    new_item = np.zeros((28, 28), np.uint8)
    new_item[4:24, 10:18] = 255  # a bright bar: unlike anything in the fake catalog
    with TestClient(create_app(directory, reload_every=0.0), base_url=LOCAL) as live_client:
        assert live_client.get("/api/health").json()["count"] == 400

        writer = SearchIndex.load(directory)
        writer.add(new_item[None], ["new/bar"])
        writer.save(directory)
        assert live_client.get("/api/health").json()["count"] == 401
        response = live_client.post(
            "/api/search?k=1", files={"image": ("bar.png", png_bytes(new_item), "image/png")}
        )
        assert response.json()["results"][0]["id"] == "new/bar"
        assert live_client.get("/api/items/new/bar/image").status_code == 200

        # A manifest that does not load (a corrupt write behind our back) is skipped.
        manifest = directory / "manifest.json"
        good = manifest.read_text()
        manifest.write_text("{not json")
        assert live_client.get("/api/health").json()["count"] == 401
        manifest.write_text(good)

        writer.remove(["new/bar"])
        writer.save(directory)
        assert live_client.get("/api/health").json()["count"] == 400
        assert live_client.get("/api/items/new/bar/image").status_code == 404


def test_serve_defaults_are_the_server_defaults() -> None:
    """The CLI spells its defaults out (--help must not import FastAPI): they must stay those
    of simsearch.server."""
    import inspect

    from simsearch import server
    from simsearch.cli import serve

    options = inspect.signature(serve).parameters
    assert options["max_upload_mb"].default * 1024 * 1024 == server.DEFAULT_MAX_UPLOAD_BYTES
    assert options["upload_timeout"].default == server.DEFAULT_UPLOAD_TIMEOUT
    assert options["max_uploads"].default == server.DEFAULT_MAX_UPLOADS


# ---------------------------------------------------------------------- limits the page reads


def test_health_reports_the_limits_the_page_uses(client: TestClient) -> None:
    from simsearch.server import DEFAULT_MAX_UPLOAD_BYTES, MAX_K

    body = client.get("/api/health").json()
    assert body["max_k"] == MAX_K
    assert body["max_upload_bytes"] == DEFAULT_MAX_UPLOAD_BYTES
    files = {"image": ("a.png", b"x")}
    assert client.post(f"/api/search?k={MAX_K + 1}", files=files).status_code == 422


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.png", b"", "empty image"),
        ("notes.txt", b"this is not an image at all", "not a recognised image"),
        ("blank.png", png_bytes(np.zeros((28, 28), np.uint8)), "blank image"),
    ],
)
def test_an_unusable_upload_is_named_once(
    client: TestClient, name: str, data: bytes, reason: str
) -> None:
    message = assert_error(client.post("/api/search", files={"image": (name, data)}), 422)
    assert message.count(name) == 1 and reason in message
    assert "image data" not in message and "bytes)" not in message


# ---------------------------------------------------------------------- hosts and origins


@pytest.mark.parametrize(
    "base_url",
    ["http://localhost", "http://localhost:1234", "http://127.0.0.1:8000", "http://[::1]"],
)
def test_loopback_names_are_answered(index: SearchIndex, base_url: str) -> None:
    with TestClient(create_app(index), base_url=base_url) as local:
        assert local.get("/api/health").status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.2", "[::2]"])
def test_other_hosts_are_refused(index: SearchIndex, item_png: Path, host: str) -> None:
    """A DNS-rebinding page reaches the server under its own name: nothing is answered."""
    with TestClient(create_app(index), base_url=f"http://{host}") as rebound:
        assert_error(rebound.get("/api/health"), 400, "host")
        assert_error(rebound.get(f"/api/items/{ITEM}/image"), 400, "--allowed-host")
        files = {"image": ("a.png", item_png.read_bytes())}
        assert_error(rebound.post("/api/search", files=files), 400, "host")


def test_allowed_hosts_and_the_wildcard(index: SearchIndex) -> None:
    from simsearch.server import allowed_hosts_for

    hosts = allowed_hosts_for("0.0.0.0", ["Simsearch.Example"])
    assert "0.0.0.0" not in hosts and "localhost" in hosts
    app = create_app(index, allowed_hosts=hosts)
    with TestClient(app, base_url="http://simsearch.example:8080") as named:
        assert named.get("/api/health").status_code == 200
    with TestClient(app, base_url="http://other.example") as other:
        assert_error(other.get("/api/health"), 400, "host")
    with TestClient(
        create_app(index, allowed_hosts=["*"]), base_url="http://any.example"
    ) as anyone:
        assert anyone.get("/api/health").status_code == 200
    assert "192.0.2.7" in allowed_hosts_for("192.0.2.7")


def test_cross_origin_posts_are_refused(client: TestClient, item_png: Path) -> None:
    files = {"image": ("a.png", item_png.read_bytes())}
    for origin in ("http://evil.example", "null", "http://localhost.evil.example"):
        response = client.post("/api/search", files=files, headers={"Origin": origin})
        assert_error(response, 403, "cross-origin")
    same = client.post("/api/search", files=files, headers={"Origin": "http://localhost:8000"})
    assert same.status_code == 200, same.text


# ---------------------------------------------------------------------- bodies: size, time, count


def _urllib_post(url: str, data: bytes, content_type: str) -> tuple[int, dict]:
    """POST as Python's urllib does: the whole body first (no Expect: 100-continue), then read."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "simsearch-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def test_clients_that_send_before_reading_get_the_json_error(index: SearchIndex) -> None:
    """urllib (and browsers) send the whole body before reading the answer: an early answer
    (413, 422 on k, 400) must reach them as JSON, not as a connection reset."""
    with live_server(create_app(index, max_upload_bytes=100_000)) as url:
        big = bytes(8 * 1024 * 1024)  # far over the limit, far over the socket buffers
        status, body = _urllib_post(f"{url}/api/search", big, "application/octet-stream")
        assert (status, list(body)) == (413, ["error"])
        status, body = _urllib_post(f"{url}/api/search", *_multipart("big.png", big))
        assert (status, list(body)) == (413, ["error"])
        small = bytes(50_000)
        status, body = _urllib_post(f"{url}/api/search?k=0", *_multipart("a.png", small))
        assert status == 422 and "k:" in body["error"]
        status, body = _urllib_post(f"{url}/api/search", big, "application/json")
        assert status == 400 and "multipart" in body["error"]
        assert httpx.get(f"{url}/api/health").json()["status"] == "ok"


def _hold_upload(port: int, declared: int, send: int) -> socket.socket:
    """A raw upload that declares ``declared`` bytes and sends ``send`` of them, then waits."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        (
            "POST /api/search HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
        ).encode()
        + bytes(send)
    )
    return sock


def test_a_slow_upload_gets_408_and_the_connection_closes(index: SearchIndex) -> None:
    with live_server(create_app(index, upload_timeout=1.0)) as url:
        port = int(url.rsplit(":", 1)[1])
        started = time.monotonic()
        with _hold_upload(port, 100_000, 1000) as sock:
            answer = _read_response(sock)
            assert sock.recv(1) == b""  # closed by the server
        assert 0.9 < time.monotonic() - started < 10
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert '{"error":"the upload did not arrive within 1 s"}' in answer


def test_uploads_beyond_the_slots_get_503_with_retry_after(
    index: SearchIndex, item_png: Path
) -> None:
    with live_server(create_app(index, max_uploads=2, upload_timeout=30)) as url:
        port = int(url.rsplit(":", 1)[1])
        held = [_hold_upload(port, 100_000, 1000) for _ in range(2)]
        try:
            deadline = time.monotonic() + 10
            while True:  # the held uploads reach the server asynchronously
                response = httpx.post(
                    f"{url}/api/search", files={"image": ("a.png", item_png.read_bytes())}
                )
                if response.status_code != 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert_error(response, 503, "retry")
            assert response.headers["retry-after"] == "1"
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while (status := _search_status(url, item_png)) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)  # the server notices the closed sockets
        assert status == 200


def _search_status(url: str, item_png: Path) -> int:
    files = {"image": ("a.png", item_png.read_bytes())}
    return httpx.post(f"{url}/api/search", files=files).status_code


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_held_uploads_are_spooled_not_held_in_memory(pca_index_dir: Path) -> None:
    """12 clients each send 16 MiB - 1 of a 16 MiB body and hold the socket: the server keeps
    about 1 MiB of each in memory (the rest waits in a temporary file), and gives it back."""
    held_count, limit = 12, 16 * 1024 * 1024
    with serve_subprocess(pca_index_dir) as (url, process):
        port = int(url.rsplit(":", 1)[1])
        before = _rss_mib(process.pid)
        held = [_hold_upload(port, limit, limit - 1) for _ in range(held_count)]
        try:
            time.sleep(1.5)  # let the server read what was sent
            during = _rss_mib(process.pid)
        finally:
            for sock in held:
                sock.close()
        time.sleep(1.0)
        after = _rss_mib(process.pid)
        assert httpx.get(f"{url}/api/health").json()["status"] == "ok"
    # Buffered in memory, the bodies would add 12 x 16 MiB = 192 MiB.
    assert during - before < held_count * 3, (before, during, after)
    assert after - before < 16, (before, during, after)


@pytest.mark.slow  # a benchmark run against a real server: ~10 s
def test_hostile_uploads_keep_the_server_within_its_memory_bound(pca_index_dir: Path) -> None:
    """A small run of scripts/bench_uploads.py: 16-bit PNG, float TIFF, big JPEGs, a bomb, a
    truncated file, a held body and a 64 MiB body from 6 clients at once against a real server.
    Every upload gets its expected JSON answer, and the server's peak RSS stays within
    baseline + search_threads x (largest decode peak + upload limit) + spool + 64 MiB."""
    script = Path(__file__).parents[1] / "scripts" / "bench_uploads.py"
    command = [sys.executable, str(script), "--index-dir", str(pca_index_dir), "--size", "2048"]
    command += ["--clients", "6", "--rounds", "2", "--upload-timeout", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["unexpected_statuses"] == {}, report["by_kind"]
    assert set(report["by_kind"]) >= {"png16", "tiff_float", "png_bomb", "held_body", "oversize"}
    assert report["meets_bound"], report["server_rss_mib"]
    assert report["server_alive_after"]
    rss = report["server_rss_mib"]
    assert rss["settled"] < rss["baseline"] + 64, rss  # what the burst leaves behind


# ---------------------------------------------------------------------- index files changing


def _simsearch(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simsearch.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_item_images_survive_two_adds_while_serving(pca_index_dir: Path, tmp_path: Path) -> None:
    """Two `simsearch add` runs replace the generation the server holds (the first keeps it, the
    second deletes it). Item images are then served from the new generation, never a 500."""
    import shutil

    directory = tmp_path / "served"
    shutil.copytree(pca_index_dir, directory)
    bar = np.zeros((28, 28), np.uint8)
    bar[4:24, 10:18] = 255
    for n in (1, 2):
        Image.fromarray(bar).save(tmp_path / f"bar{n}.png")
    # The clock never triggers a reload: the held version must answer, or the fallback.
    app = create_app(directory, reload_every=3600)
    with live_server(app) as url:
        _simsearch("add", str(tmp_path / "bar1.png"), "--index-dir", str(directory), "-q")
        _simsearch("add", str(tmp_path / "bar2.png"), "--index-dir", str(directory), "-q")
        with httpx.Client(base_url=url, timeout=30) as http:
            for item_id in (ITEM, "fashion-mnist/train/00001", ITEM):
                response = http.get(f"/api/items/{item_id}/image")
                assert response.status_code == 200, response.text
                assert response.content == SearchIndex.load(directory).item_png(item_id)


def test_an_item_the_held_index_cannot_read_comes_from_the_current_version(
    pca_index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from simsearch.errors import IndexCorruptError

    directory = tmp_path / "served"
    shutil.copytree(pca_index_dir, directory)
    held = SearchIndex.load(directory)

    def unreadable(item_id: str) -> bytes:
        raise IndexCorruptError(f"{directory}/images.npy: listed in the manifest but missing")

    monkeypatch.setattr(held, "item_png", unreadable)
    with TestClient(create_app(held, reload_every=3600), base_url=LOCAL) as http:
        # No newer version: a 500 that names no path.
        message = assert_error(http.get(f"/api/items/{ITEM}/image"), 500, "index")
        assert str(tmp_path) not in message
        writer = SearchIndex.load(directory)
        bar = np.zeros((1, 28, 28), np.uint8)
        bar[0, 4:24, 10:18] = 255
        writer.add(bar, ["new/bar"])
        writer.save(directory)
        response = http.get(f"/api/items/{ITEM}/image")
        assert response.status_code == 200, response.text
        assert response.content == writer.item_png(ITEM)
        assert http.get("/api/items/new/bar/image").status_code == 200  # now the held one


def test_an_unreadable_index_is_a_500_without_server_paths(
    pca_index_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    directory = tmp_path / "secret-location"
    shutil.copytree(pca_index_dir, directory)
    index = SearchIndex.load(directory)
    images = next(directory.glob("v*/images.npy"))
    images.write_bytes(images.read_bytes()[:-1] + b"x")  # a file changed behind the server
    with TestClient(create_app(index), base_url=LOCAL, raise_server_exceptions=False) as http:
        response = http.get(f"/api/items/{ITEM}/image")
        message = assert_error(response, 500, "index")
        assert str(tmp_path) not in message and "secret-location" not in message
        assert "/" not in message and ".npy" not in message
        assert http.get("/api/health").json()["status"] == "ok"
    assert "secret-location" in caplog.text  # the details are in the log


def test_other_failures_are_a_500_without_their_text(
    pca_index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = SearchIndex.load(pca_index_dir)

    def unreadable(item_id: str) -> bytes:
        raise PermissionError(13, "Permission denied", "/srv/private/images.npy")

    monkeypatch.setattr(index, "item_png", unreadable)
    with TestClient(create_app(index), base_url=LOCAL, raise_server_exceptions=False) as http:
        message = assert_error(http.get(f"/api/items/{ITEM}/image"), 500)
        assert "/srv" not in message and "denied" not in message.lower()


def test_serve_behind_a_reverse_proxy(pca_index_dir: Path, item_png: Path) -> None:
    """--allowed-host adds the public name; --root-path the prefix the proxy strips."""
    args = ("--allowed-host", "search.example", "--root-path", "/simsearch/")
    with serve_process(pca_index_dir, *args) as url:
        proxied = {"Host": "search.example", "X-Forwarded-Proto": "https"}
        assert httpx.get(f"{url}/api/health", headers=proxied).json()["status"] == "ok"
        docs = httpx.get(f"{url}/docs", headers=proxied).text
        assert "/simsearch/openapi.json" in docs
        files = {"image": ("a.png", item_png.read_bytes())}
        origin = {**proxied, "Origin": "https://search.example"}
        response = httpx.post(f"{url}/api/search?k=1", files=files, headers=origin)
        assert response.json()["results"][0]["id"] == ITEM
        assert_error(httpx.get(f"{url}/api/health", headers={"Host": "other.example"}), 400)


def test_a_client_waiting_for_100_continue_gets_the_413_at_once(
    index: SearchIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """curl asks before sending a large body: the 413 comes without waiting for a body that
    will never be sent (were it drained, the answer would wait for DRAIN_IDLE)."""
    from simsearch import server

    monkeypatch.setattr(server, "DRAIN_IDLE", 30.0)
    with live_server(create_app(index, max_upload_bytes=100_000)) as url:
        port = int(url.rsplit(":", 1)[1])
        head = (
            "POST /api/search HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 5000000\r\n\r\n"
        )
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(head.encode())
            answer = _read_response(sock)
        assert time.monotonic() - started < 10
        assert answer.startswith("HTTP/1.1 413"), answer[:200]
        assert '{"error":"upload larger than the 100,000 bytes limit"}' in answer


def test_uvicorn_factory_reads_its_settings_from_the_environment(
    pca_index_dir: Path, item_png: Path
) -> None:
    port = free_port()
    env = dict(os.environ)
    env.update(
        SIMSEARCH_INDEX_DIR=str(pca_index_dir),
        SIMSEARCH_ALLOWED_HOSTS="search.example,localhost",
        SIMSEARCH_MAX_UPLOAD_BYTES="20000",
    )
    command = [sys.executable, "-m", "uvicorn", "--factory", "simsearch.server:app_from_env"]
    command += ["--port", str(port), "--limit-concurrency", "256", "--timeout-keep-alive", "5"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process)  # any JSON answer: here a 400, 127.0.0.1 is not listed
        assert_error(httpx.get(f"{url}/api/health"), 400, "host")
        named = {"Host": "search.example"}
        assert httpx.get(f"{url}/api/health", headers=named).json()["max_upload_bytes"] == 20000
        files = {"image": ("a.png", item_png.read_bytes())}
        response = httpx.post(f"{url}/api/search?k=1", files=files, headers={"Host": "localhost"})
        assert response.json()["results"][0]["id"] == ITEM
    finally:
        process.terminate()
        process.wait(20)
