"""An index from elsewhere, a user's folder, a full disk, concurrent writers: nothing is lost,
nothing outside the index is touched, every failure is one line."""

from __future__ import annotations

import fcntl
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simsearch import SearchIndex, storage
from simsearch.build import BuildConfig, build_index
from simsearch.cli import app
from simsearch.errors import (
    ConfigError,
    IndexChangedError,
    IndexWriteError,
)
from simsearch.progress import Reporter
from simsearch.training import TrainConfig
from tests.fakedata import make_images

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result: Any, fragment: str = "") -> str:
    """Exit 1, no traceback, and stderr is exactly one line ``error: ...``."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert fragment.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture
def index_dir(tmp_path: Path, pca_index_dir: Path) -> Path:
    target = tmp_path / "idx"
    shutil.copytree(pca_index_dir, target)
    return target


def edit_manifest(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the manifest and re-sign it, as someone crafting an index would."""
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    manifest["manifest_sha256"] = storage.manifest_digest(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def generation(directory: Path) -> str:
    manifest = json.loads((directory / "manifest.json").read_text())
    return str(manifest["files"]["vectors.npy"]["path"].split("/")[0])


def png_file(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


# ---------------------------------------------------------------------- crafted indexes


def _escape_cases(gen: str, outside: Path) -> dict[str, Callable[[dict[str, Any]], None]]:
    victim, secret = outside / "victim.txt", outside / "secret.txt"
    secret_entry = {
        "sha256": storage.sha256_file(secret),
        "bytes": secret.stat().st_size,
    }

    def add_entry(name: str, path: str) -> Callable[[dict[str, Any]], None]:
        return lambda m: m["files"].__setitem__(name, {"path": path, **secret_entry})

    return {
        "absolute name": add_entry(str(victim), str(victim)),
        "dotdot name": add_entry("../../outside/victim.txt", f"{gen}/../../outside/victim.txt"),
        "dotdot path": add_entry("history.json", f"{gen}/../../outside/secret.txt"),
        "absolute path": add_entry("history.json", str(secret)),
        "nested name": add_entry("sub/history.json", f"{gen}/sub/history.json"),
        "encoder outside": lambda m: m["model"].__setitem__("encoder_file", "../secret.txt"),
        "two folders": add_entry("history.json", "v20200101T000000-abcdef/history.json"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "absolute name",
        "dotdot name",
        "dotdot path",
        "absolute path",
        "nested name",
        "encoder outside",
        "two folders",
    ],
)
def test_a_crafted_manifest_cannot_reach_outside_the_index(
    index_dir: Path, tmp_path: Path, case: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("precious")
    (outside / "secret.txt").write_text("the secret")
    edit_manifest(index_dir, _escape_cases(generation(index_dir), outside)[case])
    photo = png_file(tmp_path / "new.png", make_images(1, seed=3)[0][0])
    before = {p: p.read_bytes() for p in outside.iterdir()}

    for args in (
        ("query", photo),
        ("info",),
        ("verify",),
        ("add", photo),
        ("remove", "fashion-mnist/train/00001"),
    ):
        assert_one_line_error(run(*args, "--index-dir", index_dir), "manifest.json")
    built = run("build-index", "--catalog", outside, "--model-from", index_dir, "--index-dir",
                tmp_path / "other", "-q")  # fmt: skip
    assert_one_line_error(built, "manifest.json")
    assert not (tmp_path / "other").exists()
    assert {p: p.read_bytes() for p in outside.iterdir()} == before  # nothing written or added
    for folder in index_dir.iterdir():  # and the secret was copied nowhere into the index
        if folder.is_dir():
            assert all(f.read_bytes() != b"the secret" for f in folder.iterdir())


def test_an_unsigned_old_format_manifest_is_checked_too(index_dir: Path, tmp_path: Path) -> None:
    manifest = json.loads((index_dir / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["manifest_sha256"]
    manifest["files"]["history.json"] = {"path": "/etc/passwd", "sha256": "0" * 64, "bytes": 1}
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run("info", "--index-dir", index_dir), "unsafe path")


@pytest.mark.parametrize("what", ["file", "folder", "manifest"])
def test_symbolic_links_in_an_index_are_refused(index_dir: Path, tmp_path: Path, what: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    gen = index_dir / generation(index_dir)
    if what == "file":  # same bytes, same checksum: only the link itself is wrong
        elsewhere.mkdir()
        shutil.move(gen / "vectors.npy", elsewhere / "vectors.npy")
        (gen / "vectors.npy").symlink_to(elsewhere / "vectors.npy")
    elif what == "folder":
        shutil.move(gen, elsewhere)
        gen.symlink_to(elsewhere, target_is_directory=True)
    else:
        shutil.move(index_dir / "manifest.json", tmp_path / "manifest.json")
        (index_dir / "manifest.json").symlink_to(tmp_path / "manifest.json")
    result = run("query", tmp_path / "x.png", "--index-dir", index_dir)
    assert_one_line_error(result, "symbolic link")


def test_a_flipped_bit_in_the_manifest_is_detected(index_dir: Path) -> None:
    path = index_dir / "manifest.json"
    text = path.read_text()
    changed = text.replace('"Sneaker"', '"Sneakes"')  # one bit: r (0x72) -> s (0x73)
    assert changed != text
    path.write_text(changed)
    assert_one_line_error(run("info", "--index-dir", index_dir), "checksum")


def test_a_manifest_without_an_index_type_is_one_line(index_dir: Path, tmp_path: Path) -> None:
    edit_manifest(index_dir, lambda m: m["index"].pop("type"))
    photo = png_file(tmp_path / "p.png", make_images(1, seed=3)[0][0])
    for args in (("info",), ("remove", "fashion-mnist/train/00001"), ("query", photo)):
        assert_one_line_error(run(*args, "--index-dir", index_dir), "index.type")


@pytest.mark.parametrize(
    ("keys", "value"),
    [
        (("versions",), ["1.0"]),
        (("catalog", "limit"), "ten"),
        (("catalog", "label_names"), [1, 2]),
        (("model", "encoder_sha256"), 7),
        (("build",), "folders"),
        (("index", "params"), {"M": "32"}),
        (("embedding_dim",), -3),
        (("count",), 1.5),
    ],
)
def test_a_manifest_with_wrong_types_is_one_line(
    index_dir: Path, keys: tuple[str, ...], value: Any
) -> None:
    def change(manifest: dict[str, Any]) -> None:
        parent = manifest
        for key in keys[:-1]:
            parent = parent[key]
        parent[keys[-1]] = value

    edit_manifest(index_dir, change)
    for command in ("info", "verify"):
        assert_one_line_error(run(command, "--index-dir", index_dir), keys[-1])


# ---------------------------------------------------------------------- the user's folders


def test_build_never_deletes_folders_it_did_not_write(fake_data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "mine"
    lookalikes = ["venv-old", "vacation-2024", "v-neck", "v20200101T000000-abcdef"]
    for name in lookalikes:
        (target / name).mkdir(parents=True)
        (target / name / "keep.txt").write_text(name)
    (target / "notes.txt").write_text("mine")
    args = ["build-index", "--data-dir", fake_data_dir, "--model", "pca", "--code-size", "8",
            "--index-dir", target, "-q"]  # fmt: skip
    refused = run(*args)
    assert_one_line_error(refused, "not empty and holds no index")
    assert not (target / "manifest.json").exists()
    assert run(*args, "--force").exit_code == 0
    new = png_file(tmp_path / "n0.png", make_images(3, seed=9)[0][0])
    for i in range(3):  # every save collects old generations
        shutil.copy(new, tmp_path / f"n{i + 1}.png")
        assert run("add", tmp_path / f"n{i + 1}.png", "--index-dir", target, "-q").exit_code == 0
    assert run(*args, "--force").exit_code == 0  # a rebuild replaces only what it wrote
    for name in lookalikes:
        assert (target / name / "keep.txt").read_text() == name
    assert (target / "notes.txt").read_text() == "mine"
    ours = [p for p in target.iterdir() if (p / storage.GENERATION_MARK).exists()]
    assert len(ours) == 2  # the current generation and the one before
    assert SearchIndex.load(target)


def test_a_failed_build_leaves_no_folder_behind(tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    result = run("build-index", "--data-dir", empty, "--model", "pca", "--index-dir",
                 tmp_path / "new", "-q")  # fmt: skip
    assert_one_line_error(result, "lacks")
    assert not (tmp_path / "new").exists()


def test_crashed_writers_leave_nothing_after_the_next_save(index_dir: Path) -> None:
    leftovers = [
        index_dir / ".staging-v20261130T010203-aaaaaa",
        index_dir / ".staging-v20261130T010204-bbbbbb",
    ]
    for folder in leftovers:
        folder.mkdir()
        (folder / "vectors.npy").write_bytes(b"half")
    (index_dir / ".manifest-v20261130T010203-aaaaaa.tmp").write_text("{")
    index = SearchIndex.load(index_dir)
    index.remove(["fashion-mnist/train/00001"])
    index.save(index_dir)
    assert not [p for p in index_dir.iterdir() if p.name.startswith((".staging", ".manifest"))]


def test_folder_catalogs_do_not_follow_links_outside(tmp_path: Path) -> None:
    images, _ = make_images(32, seed=4)
    shop, outside = tmp_path / "shop", tmp_path / "outside"
    (shop / "shoes").mkdir(parents=True)
    (outside / "dir").mkdir(parents=True)
    for i in range(30):
        png_file(shop / "shoes" / f"{i:02d}.png", images[i])
    png_file(outside / "secret.png", images[30])
    png_file(outside / "dir" / "more.png", images[31])
    (shop / "secret.png").symlink_to(outside / "secret.png")
    (shop / "linked").symlink_to(outside / "dir", target_is_directory=True)
    (shop / "alias.png").symlink_to(shop / "shoes" / "00.png")  # inside: fine
    result = run("build-index", "--catalog", shop, "--model", "pca", "--code-size", "4",
                 "--index-dir", tmp_path / "idx", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    ids = sorted(SearchIndex.load(tmp_path / "idx").ids.tolist())
    assert ids == ["alias.png"] + [f"shoes/{i:02d}.png" for i in range(30)]


# ---------------------------------------------------------------------- add


def product_photos(folder: Path, n: int) -> list[Path]:
    """Items photographed dark on white, JPEG, in a frame; some squares fill their crop, so
    the model input has bright corners (the case a second preprocessing pass turned inside out)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    images, _ = make_images(n, seed=12)
    paths = []
    for i, pixels in enumerate(images):
        if i % 5 == 0:  # a hollow square frame filling the model input, with a random hole
            pixels = np.zeros((28, 28), np.uint8)
            pixels[:, :] = 200 + i % 50
            top, left = (int(v) for v in rng.integers(4, 14, size=2))
            pixels[top : top + 10, left : left + 8] = 0
        big = Image.fromarray(255 - pixels).resize((168, 168), Image.Resampling.BICUBIC)
        canvas = Image.new("L", (320, 240), 255)
        canvas.paste(big, (int(rng.integers(0, 150)), int(rng.integers(0, 70))))
        path = folder / f"photo{i:03d}.jpg"
        canvas.convert("RGB").save(path, quality=90)
        paths.append(path)
    return paths


def test_added_photos_find_themselves_and_bad_files_are_named(
    index_dir: Path, tmp_path: Path
) -> None:
    photos = product_photos(tmp_path / "arrivals", 149)
    (tmp_path / "arrivals" / "photo-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    result = run("add", tmp_path / "arrivals", "--index-dir", index_dir, "-q")
    assert result.exit_code == 1, result.output
    assert "added 149 item(s)" in result.stdout and "skipped 1 unreadable" in result.stdout
    assert result.stderr.count("error:") == 1 and "photo-broken.jpg" in result.stderr
    index = SearchIndex.load(index_dir)
    assert len(index) == 400 + 149
    skipped = index.manifest["catalog"]["skipped"]
    assert [Path(s["path"]).name for s in skipped] == ["photo-broken.jpg"]
    for photo, hits in zip(photos, index.query_batch(photos, k=1), strict=True):
        assert hits[0].source == str(photo.resolve()) and hits[0].distance < 1e-4


def test_add_pixels_match_query_pixels(index_dir: Path) -> None:
    """The library's add of images preprocesses each exactly as a query does."""
    index = SearchIndex.load(index_dir)
    frame = np.full((28, 28), 220, np.uint8)
    frame[8:20, 6:22] = 0  # bright corners: not Fashion-MNIST framing
    index.add([frame], ["frame"])
    hit = index.query(frame, k=1)[0]
    assert hit.id == "frame" and hit.distance < 1e-4


# ---------------------------------------------------------------------- concurrent writers


class PausingReporter(Reporter):
    """Stops the first time the build reports progress (it holds the index lock by then)."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.reached = threading.Event()
        self.go_on = threading.Event()

    def message(self, text: str) -> None:
        if not self.reached.is_set():
            self.reached.set()
            assert self.go_on.wait(30)


def test_rebuild_and_add_at_once_lose_nothing(
    index_dir: Path, fake_data_dir: Path, tmp_path: Path
) -> None:
    photo = png_file(tmp_path / "late.png", make_images(1, seed=21)[0][0])
    reporter = PausingReporter()
    config = BuildConfig(data_dir=str(fake_data_dir), train=TrainConfig(model="pca", code_size=8))
    build = threading.Thread(target=build_index, args=(config, index_dir, True, reporter))
    build.start()
    assert reporter.reached.wait(30)  # the rebuild is under way
    results: list[Any] = []
    add = threading.Thread(target=lambda: results.append(run("add", photo, "--index-dir",
                                                              index_dir, "-q")))  # fmt: skip
    add.start()
    time.sleep(0.3)
    assert add.is_alive()  # waits for the rebuild ...
    reporter.go_on.set()
    build.join(30)
    add.join(30)
    assert results[0].exit_code == 0, results[0].output
    index = SearchIndex.load(index_dir)  # ... and lands in the rebuilt index
    assert len(index) == 401 and index.dim == 8
    assert index.query(photo, k=1)[0].id.endswith("late.png")


HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a")
fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_writer_in_another_process_is_waited_for(index_dir: Path, tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(index_dir / ".lock"), "1.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    photo = png_file(tmp_path / "p.png", make_images(1, seed=5)[0][0])
    started = time.monotonic()
    result = run("add", photo, "--index-dir", index_dir)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started > 0.8
    assert "waiting for another writer" in result.stderr
    holder.wait()


def test_save_refuses_to_overwrite_a_newer_index(index_dir: Path, tmp_path: Path) -> None:
    mine = SearchIndex.load(index_dir)
    photo = png_file(tmp_path / "theirs.png", make_images(1, seed=8)[0][0])
    assert run("add", photo, "--index-dir", index_dir, "-q").exit_code == 0
    mine.remove(["fashion-mnist/train/00001"])
    with pytest.raises(IndexChangedError, match="changed since it was loaded"):
        mine.save(index_dir)
    assert len(SearchIndex.load(index_dir)) == 401  # their add is still there


def test_a_loaded_index_keeps_answering_after_writers_replace_it(
    index_dir: Path, tmp_path: Path
) -> None:
    index = SearchIndex.load(index_dir)
    first_generation = generation(index_dir)
    for i in range(3):  # its generation is collected after the second
        photo = png_file(tmp_path / f"w{i}.png", make_images(1, seed=30 + i)[0][0])
        assert run("add", photo, "--index-dir", index_dir, "-q").exit_code == 0
    assert not (index_dir / first_generation).exists()
    item = "fashion-mnist/train/00007"
    assert index.query(index.item_pixels(item), k=1)[0].id == item
    assert index.item_png(item).startswith(b"\x89PNG")
    many = np.repeat(np.asarray(index.images[:10]), 20, axis=0)  # a large batch: a new session
    assert index.embed(many).shape == (200, 16)
    assert len(index) == 400


def test_adding_while_other_threads_query_never_breaks(index_dir: Path) -> None:
    index = SearchIndex.load(index_dir)
    queries = np.asarray(index.images[:50])
    errors: list[BaseException] = []
    stop = threading.Event()

    def query_forever() -> None:
        try:
            while not stop.is_set():
                for hits in index.query_batch(queries, k=5):
                    assert len(hits) == 5 and all(h.id for h in hits)
                index.search(index.embed_pixels(queries[:3]), 3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=query_forever) for _ in range(3)]
    for thread in threads:
        thread.start()
    new, _ = make_images(60, seed=77)
    try:
        for i in range(30):
            index.add(new[2 * i : 2 * i + 2], [f"t{i}a", f"t{i}b"])
            if i % 3 == 0:
                index.remove([f"t{i}a"])
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors[0]
    assert len(index) == 400 + 60 - 10


# ---------------------------------------------------------------------- disks and files


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """A small tmpfs (root, where mounting works): ``mount(size_kb, read_only)``."""
    mounted: list[Path] = []

    def mount(size_kb: int, source: Path | None = None, read_only: bool = False) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(point)],
            capture_output=True,
        )
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        if source is not None:
            shutil.copytree(source, point / "idx")
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_read_only_index_answers_queries_and_refuses_changes_in_one_line(
    pca_index_dir: Path, tmp_path: Path, mount_point: Callable[..., Path]
) -> None:
    target = mount_point(4096, pca_index_dir, read_only=True) / "idx"
    photo = png_file(tmp_path / "p.png", make_images(1, seed=2)[0][0])
    assert run("query", photo, "--index-dir", target).exit_code == 0
    assert run("verify", "--index-dir", target).exit_code == 0
    assert_one_line_error(run("add", photo, "--index-dir", target, "-q"), "read-only")
    assert_one_line_error(run("remove", "fashion-mnist/train/00001", "--index-dir", target))


def test_a_full_disk_leaves_the_index_as_it_was(
    pca_index_dir: Path, tmp_path: Path, mount_point: Callable[..., Path]
) -> None:
    size_kb = sum(p.stat().st_size for p in pca_index_dir.rglob("*") if p.is_file()) // 1024
    target = mount_point(size_kb + 200, pca_index_dir) / "idx"  # room for the index, not two
    before = (target / "manifest.json").read_text()
    photo = png_file(tmp_path / "p.png", make_images(1, seed=2)[0][0])
    assert_one_line_error(run("add", photo, "--index-dir", target, "-q"), "no space left")
    assert (target / "manifest.json").read_text() == before
    assert sorted(p.name for p in target.iterdir()) == sorted(
        p.name for p in pca_index_dir.iterdir()
    ) + [".lock"] * (not (pca_index_dir / ".lock").exists())
    assert len(SearchIndex.load(target)) == 400


def test_a_full_disk_is_one_line_even_without_a_mount(
    index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def full(path: Path, array: np.ndarray) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("simsearch.search_index._save_npy", full)
    index = SearchIndex.load(index_dir)
    index.remove(["fashion-mnist/train/00001"])
    with pytest.raises(IndexWriteError, match="no space left"):
        index.save(index_dir)
    assert len(SearchIndex.load(index_dir)) == 400


def test_removing_every_item_is_refused_in_one_line(fake_data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "ivf"
    result = run("build-index", "--data-dir", fake_data_dir, "--model", "pca", "--limit", "100",
                 "--index-type", "ivf", "--index-dir", target, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    ids = SearchIndex.load(target).ids.tolist()
    assert_one_line_error(run("remove", *ids, "--index-dir", target), "at least one")
    assert run("remove", *ids[1:], "--index-dir", target).exit_code == 0
    left = SearchIndex.load(target)
    assert left.ids.tolist() == ids[:1]
    assert left.query(np.asarray(left.images[0]), k=5)[0].id == ids[0]
    with pytest.raises(ConfigError):
        left.remove(ids[:1])


# ---------------------------------------------------------------------- verify


def with_training_files(index_dir: Path, tmp_path: Path) -> None:
    """Give the index the files a trained model carries beside its encoder."""
    index = SearchIndex.load(index_dir)
    for name, data in (("history.json", b'{"loss": [0.3, 0.2]}'), ("autoencoder.keras", b"PK")):
        (tmp_path / name).write_bytes(data)
        index.extra_files[name] = storage.Existing(
            tmp_path / name, storage.sha256_file(tmp_path / name)
        )
    index.save(index_dir)


def test_verify_checks_every_file_and_add_never_signs_a_damaged_one(
    index_dir: Path, tmp_path: Path
) -> None:
    with_training_files(index_dir, tmp_path)
    ok = run("verify", "--index-dir", index_dir)
    assert ok.exit_code == 0 and ok.stdout.startswith("ok: ") and "7 files" in ok.stdout
    history = index_dir / generation(index_dir) / "history.json"
    history.write_bytes(b'{"loss": [0.3, 0.1]}')  # same size, one byte changed
    bad = run("verify", "--index-dir", index_dir)
    assert bad.exit_code == 1 and "history.json" in bad.stderr and "1 of 7 files" in bad.stderr
    assert run("query", history.parent / "x.png", "--index-dir", index_dir).exit_code == 1
    photo = png_file(tmp_path / "p.png", make_images(1, seed=2)[0][0])
    assert_one_line_error(run("add", photo, "--index-dir", index_dir, "-q"), "history.json")
    assert run("verify", "--index-dir", index_dir).exit_code == 1  # still named, not re-signed


def test_verify_on_a_clean_committed_old_index() -> None:
    result = run("verify", "--index-dir", ROOT / "tests" / "indices" / "v1")
    assert result.exit_code == 0, result.output


def test_item_images_survive_a_moved_folder(index_dir: Path, tmp_path: Path) -> None:
    index = SearchIndex.load(index_dir)
    shutil.move(index_dir, tmp_path / "moved")
    png = index.item_png("fashion-mnist/train/00003")  # verified through the open mapping
    assert Image.open(io.BytesIO(png)).size == (28, 28)


def test_lock_file_is_the_only_thing_a_reader_never_needs(index_dir: Path) -> None:
    """Queries never take the lock: a held lock does not slow a reader."""
    with open(index_dir / ".lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        started = time.monotonic()
        assert len(SearchIndex.load(index_dir)) == 400
        assert time.monotonic() - started < 5
