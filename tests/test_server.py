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
from simsearch.images import preprocess
from simsearch.search_index import SearchIndex
from simsearch.server import STATIC_DIR, create_app

HIT_FIELDS = ["rank", "id", "label", "label_name", "similarity", "distance", "source"]
ITEM = "fashion-mnist/train/00007"


@pytest.fixture(scope="module")
def index(pca_index_dir: Path) -> SearchIndex:
    return SearchIndex.load(pca_index_dir)


@pytest.fixture(scope="module")
def client(index: SearchIndex) -> Iterator[TestClient]:
    with TestClient(create_app(index)) as test_client:
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
    np.testing.assert_array_equal(np.asarray(seen), preprocess(buffer.getvalue()))


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
    with TestClient(create_app(index, max_upload_bytes=limit)) as client:
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
            "POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            "Content-Length: 1000000000\r\n\r\n"
        )
        chunked = (
            "POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
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

    monkeypatch.setattr(broken, "query_pixels", explode)
    with TestClient(create_app(broken), raise_server_exceptions=False) as client:
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
    port = free_port()
    command = [sys.executable, "-m", "simsearch.cli", "serve", "--index-dir", str(index_dir)]
    command += ["--port", str(port), *args]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process)
        yield url
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
    with TestClient(create_app(directory, reload_every=0.0)) as live_client:
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
