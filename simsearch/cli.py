"""The ``simsearch`` command: parse, call the library, format. No logic of its own.

Heavy modules (TensorFlow, FAISS, ONNX Runtime) are imported inside the commands that need them,
so ``simsearch --help`` stays instant. Errors raised on purpose (``SimsearchError``) become one
line on stderr and exit code 1; usage errors are Typer's own (exit 2).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from simsearch.hit import Hit

app = typer.Typer(
    name="simsearch",
    help="Image similarity search over autoencoder embeddings (Keras + FAISS).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich's markdown renderer costs ~0.2 s per start
)

IndexDir = Annotated[
    Path | None,
    typer.Option(
        "--index-dir",
        help="Index directory [default: $SIMSEARCH_INDEX_DIR or indexes/fashion-mnist].",
        show_default=False,
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")]


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit to raise (code 1)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's typed errors (and Ctrl-C) into one line and an exit code."""
    from simsearch.errors import SimsearchError

    try:
        yield
    except SimsearchError as exc:
        raise fail(_one_line(str(exc))) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


def _index_dir(index_dir: Path | None) -> Path:
    from simsearch.search_index import default_index_dir

    return index_dir if index_dir is not None else default_index_dir()


@app.command("build-index")
def build_index_cmd(
    catalog: Annotated[
        str, typer.Option(help="fashion-mnist, or a folder of images (indexed recursively).")
    ] = "fashion-mnist",
    split: Annotated[str, typer.Option(help="Split to index: train, test or all.")] = "train",
    model: Annotated[
        str,
        typer.Option(
            help="conv-denoising (default), pca, dense, deep, conv, denoising, sparse or vae"
        ),
    ] = "conv-denoising",
    code_size: Annotated[int, typer.Option(help="Embedding dimension D.")] = 64,
    epochs: Annotated[int, typer.Option(help="Epochs (cosine schedule, early stopping).")] = 20,
    whiten: Annotated[
        float | None,
        typer.Option(help="PCA-whitening power folded into the encoder [0.25 for conv-denoising]."),
    ] = None,
    mirror: Annotated[
        bool | None,
        typer.Option(
            "--mirror/--no-mirror",
            help="Code = mean of the image's and its mirror image's codes [on for conv-denoising; "
            "off embeds twice as fast].",
        ),
    ] = None,
    tail_convs: Annotated[
        int,
        typer.Option(help="conv-denoising: stride-1 convs at 7x7 after the strided ones (0-4)."),
    ] = 0,
    noise: Annotated[
        float | None,
        typer.Option(
            help="conv-denoising: std of the training noise on [0, 1] pixels "
            "[0.1; 0 with --use-labels]."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N items.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (repeatable runs).")] = 0,
    loss: Annotated[str, typer.Option(help="bce or mse.")] = "bce",
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 256,
    index_type: Annotated[
        str,
        typer.Option(
            help="auto (flat up to 20,000 items, hnsw up to 2,000,000, ivf above), flat (exact), "
            "hnsw or ivf."
        ),
    ] = "auto",
    hnsw_m: Annotated[int | None, typer.Option(help="HNSW: links per node [32].")] = None,
    ef_search: Annotated[int | None, typer.Option(help="HNSW: search breadth [64].")] = None,
    nlist: Annotated[int | None, typer.Option(help="IVF: lists [4*sqrt(n)].")] = None,
    nprobe: Annotated[int | None, typer.Option(help="IVF: lists searched [16].")] = None,
    pq_m: Annotated[
        int | None, typer.Option(help="IVF: product-quantizer bytes per vector (0 = IVF-Flat).")
    ] = None,
    labels_from_folders: Annotated[
        bool, typer.Option(help="Folder catalogs: first folder level is the label.")
    ] = False,
    model_from: Annotated[
        Path | None, typer.Option(help="Reuse the model of this index instead of training.")
    ] = None,
    use_labels: Annotated[
        bool,
        typer.Option(help="Also train a classifier head on the code from the catalog's labels."),
    ] = False,
    index_dir: IndexDir = None,
    data_dir: Annotated[
        str | None, typer.Option(help="Folder with the Fashion-MNIST IDX files.")
    ] = None,
    tensorboard: Annotated[
        Path | None, typer.Option(help="Also write TensorBoard logs to this folder.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing index.")] = False,
    quiet: Quiet = False,
) -> None:
    """Train an autoencoder, embed the catalog and save a FAISS cosine index."""
    with user_errors():
        from simsearch.build import BuildConfig, build_index
        from simsearch.progress import Reporter
        from simsearch.training import TrainConfig

        config = BuildConfig(
            catalog=catalog,
            split=split,
            limit=limit,
            train=TrainConfig(
                model=model,
                code_size=code_size,
                epochs=epochs,
                whiten=whiten,
                mirror=mirror,
                tail_convs=tail_convs,
                noise=noise,
                batch_size=batch_size,
                loss=loss,
                seed=seed,
                use_labels=use_labels,
            ),
            index_type=index_type,
            index_params=_index_params(hnsw_m, ef_search, nlist, nprobe, pq_m),
            data_dir=data_dir,
            labels_from_folders=labels_from_folders,
            model_from=str(model_from) if model_from else None,
        )
        target = _index_dir(index_dir)
        index = build_index(config, target, force, Reporter(quiet), tensorboard)
        kind = index.manifest["model"].get("model", model)
        skipped = len(index.manifest["catalog"].get("skipped") or [])
        typer.echo(
            f"built {target}: {len(index):,} items, {index.dim}-d {kind} embeddings"
            + (f", {skipped} unreadable file(s) skipped" if skipped else "")
        )


def _index_params(
    hnsw_m: int | None,
    ef_search: int | None,
    nlist: int | None,
    nprobe: int | None,
    pq_m: int | None,
) -> dict[str, int]:
    given = {"M": hnsw_m, "efSearch": ef_search, "nlist": nlist, "nprobe": nprobe, "pq_m": pq_m}
    return {key: value for key, value in given.items() if value is not None}


@app.command()
def add(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders to add.")],
    index_dir: IndexDir = None,
    quiet: Quiet = False,
) -> None:
    """Add images to an index without rebuilding it (ids: paths, relative to a folder catalog)."""
    with user_errors():
        from simsearch.storage import locked
        from simsearch.updates import add_paths

        directory = _index_dir(index_dir)
        with locked(directory):
            report = add_paths(directory, paths, quiet=quiet)
        for skipped in report.skipped:
            typer.echo(f"error: {skipped}", err=True)
        typer.echo(f"added {report.added} item(s); the index holds {report.count:,}")
        if report.skipped:
            raise typer.Exit(1)


@app.command()
def remove(
    ids: Annotated[list[str], typer.Argument(help="Catalog ids to remove.")],
    index_dir: IndexDir = None,
) -> None:
    """Remove items by id (all or nothing: an unknown id removes none)."""
    with user_errors():
        from simsearch.search_index import SearchIndex
        from simsearch.storage import locked

        directory = _index_dir(index_dir)
        with locked(directory):
            index = SearchIndex.load(directory)
            index.remove(ids)
            index.save(directory)
        typer.echo(f"removed {len(set(ids))} item(s); the index holds {len(index):,}")


@app.command()
def query(
    images: Annotated[list[str], typer.Argument(help="Image files to search with.")],
    index_dir: IndexDir = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=1000, help="Neighbours.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines output.")] = False,
    grid: Annotated[
        Path | None,
        typer.Option(help="Also draw the results as a PNG grid, one block of lines per query."),
    ] = None,
    explain: Annotated[
        Path | None,
        typer.Option(
            "--explain",
            help="Also draw what the preprocessing did as a PNG, one row per query: the image, "
            "its background, the object and crop found, the 28x28 model input.",
        ),
    ] = None,
) -> None:
    """Print the nearest catalog neighbours of each image."""
    with user_errors():
        from simsearch import images as image_prep
        from simsearch.errors import InvalidImageError
        from simsearch.search_index import SearchIndex

        if grid is not None or explain is not None:
            from simsearch import figures

            for out in (grid, explain):
                if out is not None:
                    figures.check_writable(out)  # fail before any work
        index = SearchIndex.load(_index_dir(index_dir))
        failed = False
        rows = []
        explained = []
        for name in images:  # one at a time: a bad image must not stop the others
            try:
                pixels, steps = image_prep.explain(name)
                hits = index.query_pixels(pixels[None], k)[0]
            except InvalidImageError as exc:
                failed = True
                _print_error(name, _one_line(str(exc)), as_json)
                continue
            _print_hits(name, hits, as_json, first=name == images[0])
            if grid is not None:
                rows.append(figures.query_row(index, name, name, pixels, hits))
            if explain is not None:
                from simsearch.explain import ExplainRow

                explained.append(ExplainRow(name, pixels, steps))
        if grid is not None and rows:
            figures.query_grid(rows, grid)
            typer.echo(f"wrote {grid}", err=True)  # stdout carries only results
        if explain is not None and explained:
            from simsearch.explain import draw_explain

            draw_explain(explained, explain)
            typer.echo(f"wrote {explain}", err=True)
        if failed:
            raise typer.Exit(1)


def _print_error(name: str, message: str, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"query": name, "error": message}))
    typer.echo(f"error: {message}", err=True)


def _print_hits(name: str, hits: list[Hit], as_json: bool, first: bool) -> None:
    if as_json:
        results = [
            hit.to_dict()
            | {"similarity": round(hit.similarity, 6), "distance": round(hit.distance, 6)}
            for hit in hits
        ]
        typer.echo(json.dumps({"query": name, "results": results}))
        return
    if not first:
        typer.echo("")
    typer.echo(f"query: {name}")
    width = max([len(hit.id) for hit in hits] + [2])
    typer.echo(f"{'rank':>4}  {'id':<{width}}  {'label':<12}  {'similarity':>10}  {'distance':>8}")
    for hit in hits:
        label = hit.label_name or ("-" if hit.label is None else str(hit.label))
        typer.echo(
            f"{hit.rank:>4}  {hit.id:<{width}}  {label:<12}  {hit.similarity:>10.4f}  "
            f"{hit.distance:>8.4f}"
        )


@app.command()
def info(
    index_dir: IndexDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Describe an index: catalog, model, embedding, index type, versions, files."""
    with user_errors():
        from simsearch.search_index import SearchIndex

        directory = _index_dir(index_dir)
        index = SearchIndex.load(directory)
        manifest = index.manifest
        if as_json:
            typer.echo(json.dumps(manifest, indent=2))
            return
        for line in _describe(directory, manifest):
            typer.echo(line)


@app.command("export-item")
def export_item(
    item_id: Annotated[str, typer.Argument(help="Catalog id, e.g. fashion-mnist/train/00042.")],
    out: Annotated[Path, typer.Argument(help="PNG file to write.")],
    index_dir: IndexDir = None,
) -> None:
    """Write a catalog item's image (as the model saw it) to a PNG file."""
    with user_errors():
        from simsearch.search_index import SearchIndex

        index = SearchIndex.load(_index_dir(index_dir))
        png = index.item_png(item_id)
        try:
            out.write_bytes(png)
        except OSError as exc:
            raise fail(f"cannot write {out}: {exc.strerror}") from None
        typer.echo(f"wrote {out}")


@app.command("map")
def map_cmd(
    index_dir: IndexDir = None,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("map.png"),
    method: Annotated[str, typer.Option(help="tsne, umap (needs umap-learn) or pca.")] = "tsne",
    sample: Annotated[int, typer.Option(help="Random catalog items to draw.")] = 3000,
    thumbnails: Annotated[bool, typer.Option(help="Item images at well-spread points.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed (sample, projection).")] = 0,
    quiet: Quiet = False,
) -> None:
    """Draw the catalog's embeddings in 2-D, coloured by class."""
    with user_errors():
        from simsearch import figures
        from simsearch.progress import Reporter
        from simsearch.search_index import SearchIndex

        figures.check_writable(out)  # fail before any work
        index = SearchIndex.load(_index_dir(index_dir))
        result = figures.embedding_map(
            index, out, method, sample, thumbnails, seed, Reporter(quiet)
        )
        typer.echo(
            f"wrote {out}: {figures.METHOD_NAMES[result.method]} of {result.points:,} items "
            f"in {result.total_seconds:.1f} s"
        )


@app.command()
def reconstruct(
    index_dir: IndexDir = None,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("recon.png"),
    n: Annotated[int, typer.Option("--n", help="Catalog items to show (1-50).")] = 10,
    compare_pca: Annotated[
        bool, typer.Option(help="Add PCA reconstructions with the same code size.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed (which items).")] = 0,
    quiet: Quiet = False,
) -> None:
    """Draw catalog items and the model's reconstructions of them (MSE per row on stderr)."""
    with user_errors():
        from simsearch import figures
        from simsearch.progress import Reporter
        from simsearch.search_index import SearchIndex

        figures.check_writable(out)  # fail before any work
        index = SearchIndex.load(_index_dir(index_dir))
        result = figures.reconstruct(index, out, n, compare_pca, seed, Reporter(quiet))
        for row in result.rows[1:]:
            detail = f" ({row.detail})" if row.detail else ""
            typer.echo(f"{row.name}{detail}: MSE {row.mse:.5f} per pixel", err=True)
        typer.echo(f"wrote {out}")


@app.command()
def serve(
    index_dir: IndexDir = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes (each loads the index once).")
    ] = 1,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest accepted image upload, in MiB.")
    ] = 16,
) -> None:
    """Serve the web page and the HTTP API (docs at /docs) until Ctrl-C."""
    with user_errors():
        from simsearch.errors import MissingDependencyError

        try:
            from simsearch.server import serve as run_server
        except ModuleNotFoundError as exc:
            raise MissingDependencyError(
                f"serve needs {exc.name}: pip install 'simsearch[serve]'"
            ) from None
        run_server(_index_dir(index_dir), host, port, workers, int(max_upload_mb * 1024 * 1024))


@app.command()
def evaluate(
    index_dir: IndexDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    data_dir: Annotated[
        str | None, typer.Option(help="Folder with the Fashion-MNIST IDX files.")
    ] = None,
    limit_queries: Annotated[
        int | None, typer.Option(min=1, help="Use only the first N test queries.")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Retrieval quality (P@k, mAP@100, 10-NN accuracy) vs raw-pixel and PCA baselines."""
    with user_errors():
        from simsearch.evaluate import evaluate as run_evaluation
        from simsearch.evaluate import format_report
        from simsearch.progress import Reporter
        from simsearch.search_index import SearchIndex

        index = SearchIndex.load(_index_dir(index_dir))
        result = run_evaluation(index, data_dir, limit=limit_queries, reporter=Reporter(quiet))
        typer.echo(json.dumps(result) if as_json else format_report(result))


def _describe(directory: Path, m: dict[str, Any]) -> list[str]:
    model, catalog, index = m["model"], m.get("catalog", {}), m["index"]
    params = ", ".join(f"{k}={v}" for k, v in index.get("params", {}).items()) or "exact search"
    limit = f", first {catalog['limit']:,}" if catalog.get("limit") else ""
    val = model.get("final_val_loss")
    lines = [
        f"index        {directory}",
        f"items        {m['count']:,} "
        f"({catalog.get('source', '?')}/{catalog.get('split', '?')}{limit})",
        f"model        {model.get('model')} autoencoder, code size {model.get('code_size')}, "
        f"{model.get('epochs_run')} epochs in {model.get('train_seconds')} s"
        + (f", val loss {val:.4f}" if isinstance(val, float) else ""),
        f"embedding    {m['embedding_dim']}-d, metric {m['metric']} (L2-normalised, inner product)",
        f"index type   {index['type']} ({params})"
        + (
            f", {index['tombstones']:,} removed items skipped until a rebuild"
            if index.get("tombstones")
            else ""
        ),
        f"created      {m.get('created_at')}"
        + (f", updated {m['updated_at']}" if m.get("updated_at") else ""),
        "versions     " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v),
        f"format       {m['format_version']}",
        "files",
    ]
    for name, entry in m["files"].items():
        lines.append(f"  {name:<22} {entry['bytes']:>12,} bytes  sha256 {entry['sha256'][:12]}")
    return lines


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
