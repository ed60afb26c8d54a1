"""The ``simsearch`` command: parse, call the library, format. No logic of its own.

Heavy modules (TensorFlow, FAISS, ONNX Runtime) are imported inside the commands that need them,
so ``simsearch --help`` stays instant. Errors raised on purpose (``SimsearchError``) become one
line on stderr and exit code 1; usage errors are Typer's own (exit 2).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from simsearch.recipes import MAX_TAIL_CONVS, RECIPES, TrainConfig, default_text

if TYPE_CHECKING:
    from simsearch.duplicates import DuplicateGroup
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
Verbose = Annotated[
    bool, typer.Option("--verbose", help="Also show TensorFlow's start-up and C++ log lines.")
]


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
    except OSError as exc:  # a file system failure the library did not expect: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        raise fail(_one_line(f"{where}{exc.strerror or exc}")) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


def _index_dir(index_dir: Path | None) -> Path:
    from simsearch.search_index import default_index_dir

    return index_dir if index_dir is not None else default_index_dir()


def _noise_default() -> str:
    """conv-denoising's training noise without and with --use-labels, for the help."""
    entry = RECIPES["conv-denoising"]
    noise = entry.corruption.noise if entry.corruption else 0.0
    return f"{noise:g}; {entry.labels_noise or 0.0:g} with --use-labels"


@app.command("build-index")
def build_index_cmd(
    catalog: Annotated[
        str, typer.Option(help="fashion-mnist, or a folder of images (indexed recursively).")
    ] = "fashion-mnist",
    split: Annotated[str, typer.Option(help="Split to index: train, test or all.")] = "train",
    model: Annotated[
        str, typer.Option(help=f"Model kind: {', '.join(RECIPES)}.")
    ] = TrainConfig.model,
    code_size: Annotated[int, typer.Option(help="Embedding dimension D.")] = TrainConfig.code_size,
    epochs: Annotated[
        int, typer.Option(help="Epochs (cosine schedule, early stopping).")
    ] = TrainConfig.epochs,
    whiten: Annotated[
        float | None,
        typer.Option(
            help=f"PCA-whitening power folded into the encoder, 0-0.5 [{default_text('whiten')}]."
        ),
    ] = None,
    mirror: Annotated[
        bool | None,
        typer.Option(
            "--mirror/--no-mirror",
            help="Code = mean of the image's and its mirror image's codes "
            f"[{default_text('mirror')}; off embeds twice as fast].",
        ),
    ] = None,
    tail_convs: Annotated[
        int,
        typer.Option(
            help="conv-denoising: stride-1 convs at 7x7 after the strided ones "
            f"(0-{MAX_TAIL_CONVS})."
        ),
    ] = TrainConfig.tail_convs,
    noise: Annotated[
        float | None,
        typer.Option(
            help=f"conv-denoising: std of the training noise on [0, 1] pixels [{_noise_default()}]."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N items.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (repeatable runs).")] = TrainConfig.seed,
    loss: Annotated[str, typer.Option(help="bce or mse.")] = TrainConfig.loss,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = TrainConfig.batch_size,
    index_type: Annotated[
        str,
        typer.Option(
            help="auto (flat up to 20,000 items, hnsw up to 2,000,000, ivf above), flat (exact), "
            "hnsw, ivf, or ivf-fastscan (4-bit codes re-ranked exactly: ~25 bytes per vector)."
        ),
    ] = "auto",
    hnsw_m: Annotated[int | None, typer.Option(help="HNSW: links per node [32].")] = None,
    ef_search: Annotated[int | None, typer.Option(help="HNSW: search breadth [64].")] = None,
    nlist: Annotated[int | None, typer.Option(help="IVF: lists [4*sqrt(n)].")] = None,
    nprobe: Annotated[
        int | None, typer.Option(help="IVF: lists searched [ivf 16, ivf-fastscan 8].")
    ] = None,
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
    from_embeddings: Annotated[
        Path | None,
        typer.Option(
            help="Index these embeddings (a folder from `simsearch embed`, or a Parquet file "
            "from `simsearch export` with --model-from): no training, no images read."
        ),
    ] = None,
    shards: Annotated[
        int, typer.Option(min=1, help="With --from-embeddings: split the index into N shards.")
    ] = 1,
    ray: Annotated[
        str | None,
        typer.Option(
            help="With --from-embeddings: build the shards on the Ray cluster at this address "
            "(host:port, or auto)."
        ),
    ] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Train an autoencoder, embed the catalog and save a FAISS cosine index."""
    _show_tensorflow_logs(verbose)
    with user_errors():
        from simsearch.build import BuildConfig, build_index
        from simsearch.progress import Reporter

        if from_embeddings is not None:
            _refuse_catalog_options(catalog, split, limit, labels_from_folders, use_labels)
            _build_from_embeddings(
                from_embeddings,
                _index_dir(index_dir),
                model_from=model_from,
                shards=shards,
                index_type=index_type,
                index_params=_index_params(hnsw_m, ef_search, nlist, nprobe, pq_m),
                ray=ray,
                force=force,
                quiet=quiet,
            )
            return
        if shards != 1 or ray is not None:
            raise fail("--shards and --ray build from embeddings: add --from-embeddings EMB_DIR")

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


def _show_tensorflow_logs(verbose: bool) -> None:
    """--verbose: TensorFlow's start-up and C++ log lines, which are hidden otherwise
    (``simsearch.models.import_keras``)."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


def _refuse_catalog_options(
    catalog: str, split: str, limit: int | None, labels_from_folders: bool, use_labels: bool
) -> None:
    given = [
        name
        for name, used in (
            ("--catalog", catalog != "fashion-mnist"),
            ("--split", split != "train"),
            ("--limit", limit is not None),
            ("--labels-from-folders", labels_from_folders),
            ("--use-labels", use_labels),
        )
        if used
    ]
    if given:
        raise fail(
            f"--from-embeddings takes the catalog from the embeddings: drop {', '.join(given)}"
        )


def _build_from_embeddings(source: Path, target: Path, *, quiet: bool, **options: Any) -> None:
    from simsearch.build import build_from_embeddings
    from simsearch.progress import Reporter

    index = build_from_embeddings(source, target, reporter=Reporter(quiet), **options)
    searcher = index.manifest["index"]
    shards = len(searcher.get("shards") or [1])
    typer.echo(
        f"built {target}: {len(index):,} items, {index.dim}-d embeddings from {source}, "
        f"{searcher['type']} index in {shards} shard(s)"
        + ("" if index.has_item_images else " (no item images)")
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
def embed(
    model_from: Annotated[
        Path, typer.Option(help="The index whose (checksum-verified) encoder embeds the catalog.")
    ],
    out: Annotated[
        Path, typer.Option(help="Embeddings folder to write (Parquet parts, manifest, encoder).")
    ],
    catalog: Annotated[
        str,
        typer.Option(
            help="fashion-mnist, a folder of images (recursive), or a list of image paths "
            "(a text file, one per line, or a Parquet file with a 'path' column)."
        ),
    ] = "fashion-mnist",
    split: Annotated[str, typer.Option(help="Fashion-MNIST split: train, test or all.")] = (
        "train"
    ),
    limit: Annotated[int | None, typer.Option(help="Use only the first N items.")] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            help="Run on the Ray cluster at this address (host:port, or auto: the one `ray "
            "start` runs here); without it, in this process."
        ),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option(min=1, help="With --ray: encoder actors [one per CPU of the cluster]."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Items per batch (and per Parquet part).")
    ] = 8192,
    images: Annotated[
        bool,
        typer.Option(
            "--images/--no-images",
            help="Keep each item's 28x28 model input (784 bytes) for the index's item images.",
        ),
    ] = True,
    labels_from_folders: Annotated[
        bool, typer.Option(help="Folder catalogs: first folder level is the label.")
    ] = False,
    data_dir: Annotated[
        str | None, typer.Option(help="Folder with the Fashion-MNIST IDX files.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing embeddings folder.")] = False,
    quiet: Quiet = False,
) -> None:
    """Embed a catalog with an index's encoder into Parquet (for build-index --from-embeddings
    or any vector database); with --ray, on a Ray cluster."""
    with user_errors():
        from simsearch.embeddings import EmbedConfig
        from simsearch.embeddings import embed as run_embed
        from simsearch.progress import Reporter

        config = EmbedConfig(
            catalog=catalog,
            split=split,
            limit=limit,
            data_dir=data_dir,
            labels_from_folders=labels_from_folders,
            batch_size=batch_size,
            images=images,
        )
        result = run_embed(config, model_from, out, ray, actors, force, Reporter(quiet))
        skipped = f", {len(result.skipped)} unreadable file(s) skipped" if result.skipped else ""
        typer.echo(
            f"embedded {result.count:,} items into {out} ({result.parts} part(s), "
            f"{result.count / max(result.seconds, 1e-9):,.0f} images/s){skipped}"
        )


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
    index_dir: IndexDir = None,
    images: Annotated[
        bool,
        typer.Option("--images/--no-images", help="Add each item's 28x28 model input."),
    ] = False,
) -> None:
    """Write an index's items and vectors as one Parquet file (id, label, label_name, source,
    vector) for a vector database, or for build-index --from-embeddings."""
    with user_errors():
        from simsearch.parquet import export as run_export
        from simsearch.search_index import SearchIndex

        index = SearchIndex.load(_index_dir(index_dir))
        rows = run_export(index, out, images=images)
        typer.echo(f"wrote {out}: {rows:,} items, {index.dim}-d vectors")


@app.command()
def add(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders to add.")],
    index_dir: IndexDir = None,
    quiet: Quiet = False,
) -> None:
    """Add images to an index without rebuilding it (ids: paths, relative to a folder catalog).

    Unreadable files are skipped and listed (exit code 1 at the end); the others are added.
    """
    with user_errors():
        from simsearch.updates import add_paths

        report = add_paths(_index_dir(index_dir), paths, quiet=quiet)
        for skipped in report.skipped:
            typer.echo(f"error: {skipped['error']}", err=True)
        summary = f"added {report.added} item(s); the index holds {report.count:,}"
        if report.skipped:
            summary += f"; skipped {len(report.skipped)} unreadable file(s)"
        typer.echo(summary)
        if report.skipped:
            raise typer.Exit(1)


@app.command()
def remove(
    ids: Annotated[list[str], typer.Argument(help="Catalog ids to remove.")],
    index_dir: IndexDir = None,
) -> None:
    """Remove items by id (all or nothing: an unknown id removes none)."""
    with user_errors():
        from simsearch.updates import remove_ids

        count = remove_ids(_index_dir(index_dir), ids)
        typer.echo(f"removed {len(set(ids))} item(s); the index holds {count:,}")


@app.command()
def verify(index_dir: IndexDir = None) -> None:
    """Check the manifest and every file of an index against its sha256 (exit 1 if any fails)."""
    with user_errors():
        from simsearch.storage import verify as verify_index

        directory = _index_dir(index_dir)
        manifest, problems = verify_index(directory)
        for problem in problems:
            typer.echo(f"error: {_one_line(problem)}", err=True)
        if problems:
            raise fail(f"{directory}: {len(problems)} of {len(manifest['files'])} files fail")
        total = sum(entry["bytes"] for entry in manifest["files"].values())
        typer.echo(
            f"ok: {directory}: manifest and {len(manifest['files'])} files verified "
            f"({total:,} bytes, {manifest['count']:,} items)"
        )


@app.command()
def query(
    images: Annotated[
        list[str] | None,
        typer.Argument(help="Image files, or folders (searched recursively) to search with."),
    ] = None,
    index_dir: IndexDir = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Neighbours (at most 1000).")] = 10,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="Only items of this class (name or id); repeatable."),
    ] = None,
    id_prefix: Annotated[
        str | None, typer.Option(help="Only items whose id starts with this.")
    ] = None,
    min_similarity: Annotated[
        float | None, typer.Option(help="Only hits at least this similar (-1 to 1).")
    ] = None,
    max_distance: Annotated[
        float | None, typer.Option(help="Only hits at most this far (0 to 2).")
    ] = None,
    from_list: Annotated[
        Path | None,
        typer.Option(help="Also query the image paths in this file (one per line; '-' = stdin)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines output.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV output, one row per hit.")] = False,
    grid: Annotated[
        Path | None,
        typer.Option(help="Also draw the results as a PNG grid, one block of lines per query."),
    ] = None,
    explain: Annotated[
        Path | None,
        typer.Option(
            help="Also draw what preprocessing did as a PNG, one row per query: the image, "
            "the background found, the object and its crop, the 28x28 model input.",
        ),
    ] = None,
) -> None:
    """Print the nearest catalog neighbours of each image (as each one is answered)."""
    with user_errors():
        import numpy as np

        from simsearch.errors import InvalidImageError
        from simsearch.search_index import MAX_K, SearchIndex

        if as_json and as_csv:
            raise typer.BadParameter("choose one of --json and --csv")
        if k > MAX_K:
            raise typer.BadParameter(f"-k must be at most {MAX_K}, got {k}")
        names = _query_names(images or [], from_list)
        if grid is not None or explain is not None:
            from simsearch import figures

            for out in (grid, explain):
                if out is not None:
                    figures.check_writable(out)  # fail before any work
        index = SearchIndex.load(_index_dir(index_dir))
        filters: dict[str, Any] = {"labels": label or None, "id_prefix": id_prefix}
        filters |= {"min_similarity": min_similarity, "max_distance": max_distance}
        index.search(np.zeros((0, index.dim), np.float32), 1, **filters)  # checks the filters
        output = _Output("json" if as_json else "csv" if as_csv else "table")
        failed = False
        rows = []
        explained = []
        for name in names:  # one at a time: a bad image must not stop the others
            try:
                answer = index.query_detail(name, k, explain=explain is not None, **filters)
            except InvalidImageError as exc:
                failed = True
                output.error(name, _one_line(str(exc)))
                continue
            output.hits(name, answer.hits)
            if grid is not None:
                rows.append(figures.query_row(index, name, name, answer.pixels, answer.hits))
            if explain is not None:
                explained.append(
                    figures.ExplainRow(name, answer.pixels, answer.steps, answer.framing)
                )
        if grid is not None and rows:
            figures.query_grid(rows, grid)
            typer.echo(f"wrote {grid}", err=True)  # stdout carries only results
        if explain is not None and explained:
            figures.draw_explain(explained, explain)
            typer.echo(f"wrote {explain}", err=True)
        if failed:
            raise typer.Exit(1)


def _query_names(images: list[str], from_list: Path | None) -> Iterator[str]:
    """The query images: files as given, folders expanded (recursively, sorted), then the
    paths listed in ``from_list`` (blank lines and ``#`` comments skipped). Checks the
    arguments now; reads folders and the list as the queries are answered."""
    from simsearch.catalog import image_files
    from simsearch.errors import ConfigError

    if not images and from_list is None:
        raise typer.BadParameter("give image files or folders (or --from-list FILE)")
    if from_list is not None and str(from_list) != "-" and not from_list.is_file():
        raise ConfigError(f"--from-list {from_list}: no such file")

    def names() -> Iterator[str]:
        for name in images:
            if Path(name).is_dir():
                found = image_files(Path(name))
                if not found:
                    raise ConfigError(f"no image files under {name}")
                yield from (str(path) for path in found)
            else:
                yield name
        if from_list is not None:
            stdin = str(from_list) == "-"
            lines = sys.stdin if stdin else open(from_list, encoding="utf-8")  # noqa: SIM115
            try:
                listed = 0
                for line in lines:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        listed += 1
                        yield line
                if not listed:  # as a folder with no images: a list that names none is a mistake
                    raise ConfigError(f"--from-list {from_list}: no image paths listed")
            finally:
                if not stdin:
                    lines.close()

    return names()


class _Output:
    """Results as they come: a table per query, JSON Lines, or CSV rows (one per hit)."""

    CSV_FIELDS = ("query", "rank", "id", "label", "label_name", "similarity", "distance", "source")

    def __init__(self, style: str) -> None:
        self.style = style
        self.first = True
        self.csv: Any = None
        if style == "csv":
            import csv

            self.csv = csv.writer(sys.stdout, lineterminator="\n")
            self.csv.writerow(self.CSV_FIELDS)

    def error(self, name: str, message: str) -> None:
        if self.style == "json":
            typer.echo(json.dumps({"query": name, "error": message}))
        typer.echo(f"error: {message}", err=True)

    def hits(self, name: str, hits: list[Hit]) -> None:
        if self.style == "json":
            record = {"query": name, "results": [hit.to_dict() for hit in hits]}
            typer.echo(json.dumps(record))
        elif self.style == "csv":
            for hit in hits:
                fields = hit.to_dict()
                self.csv.writerow([name, *(_csv_value(fields[f]) for f in self.CSV_FIELDS[1:])])
            sys.stdout.flush()
        else:
            self._table(name, hits)
        self.first = False

    def _table(self, name: str, hits: list[Hit]) -> None:
        if not self.first:
            typer.echo("")
        typer.echo(f"query: {name}")
        if not hits:
            typer.echo("no hits (nothing passes the filters and thresholds)")
            return
        width = max([len(hit.id) for hit in hits] + [2])
        typer.echo(
            f"{'rank':>4}  {'id':<{width}}  {'label':<12}  {'similarity':>10}  {'distance':>8}"
        )
        for hit in hits:
            label = hit.label_name or ("-" if hit.label is None else str(hit.label))
            typer.echo(
                f"{hit.rank:>4}  {hit.id:<{width}}  {label:<12}  {hit.similarity:>10.4f}  "
                f"{hit.distance:>8.4f}"
            )


def _csv_value(value: Any) -> Any:
    return "" if value is None else value


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
    verbose: Verbose = False,
) -> None:
    """Draw catalog items and the model's reconstructions of them (MSE per row on stderr)."""
    _show_tensorflow_logs(verbose)
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
    upload_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds an upload may take to arrive (else 408).")
    ] = 60,
    max_uploads: Annotated[
        int, typer.Option(min=1, help="Uploads in progress at once per worker (else 503).")
    ] = 32,
    search_threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Uploads decoded and searched at once per worker [default: CPUs, at least 2].",
            show_default=False,
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A Host name to answer besides localhost, 127.0.0.1, [::1] and the bound "
            "address (repeatable); '*' answers any, only behind a trusted reverse proxy.",
            show_default=False,
        ),
    ] = None,
    root_path: Annotated[
        str, typer.Option(help="Path prefix a reverse proxy serves the app under (/simsearch).")
    ] = "",
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Proxies whose X-Forwarded-For/-Proto are trusted "
            "[default: $FORWARDED_ALLOW_IPS or 127.0.0.1].",
            show_default=False,
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help="Serve on the Ray cluster at ADDRESS (host:port, or auto: the one started here "
            "with `ray start`) with Ray Serve: replicas of the app, or one deployment per shard "
            "of a sharded index.",
            show_default=False,
        ),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --ray: copies of the app (and of each shard) [default: 1].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the web page and the HTTP API (docs at /docs) until Ctrl-C."""
    with user_errors():
        from simsearch.errors import ConfigError, MissingDependencyError

        if ray is None and replicas is not None:
            raise ConfigError("--replicas needs --ray (on one machine use --workers)")
        if ray is not None and (workers != 1 or forwarded_allow_ips is not None):
            raise ConfigError("--workers and --forwarded-allow-ips do not apply with --ray")
        try:
            from simsearch.server import serve as run_server
        except ModuleNotFoundError as exc:
            raise MissingDependencyError(
                f"serve needs {exc.name}: pip install 'simsearch[serve]'"
            ) from None
        if ray is not None:
            from simsearch import ray_serve

            ray_serve.run(
                _index_dir(index_dir),
                ray,
                replicas or 1,
                host,
                port,
                allowed_hosts=allowed_host or (),
                root_path=root_path.rstrip("/"),
                max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                upload_timeout=upload_timeout,
                max_uploads=max_uploads,
                search_threads=search_threads,
            )
            return
        run_server(
            _index_dir(index_dir),
            host,
            port,
            workers,
            int(max_upload_mb * 1024 * 1024),
            allowed_hosts=allowed_host or (),
            upload_timeout=upload_timeout,
            max_uploads=max_uploads,
            search_threads=search_threads,
            root_path=root_path.rstrip("/"),
            forwarded_allow_ips=forwarded_allow_ips,
        )


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


@app.command()
def duplicates(
    index_dir: IndexDir = None,
    against: Annotated[
        Path | None,
        typer.Option(
            help="A folder of images (recursive), an image file or another index (same model): "
            "list its items that duplicate index items, under the index item."
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Least cosine similarity of two near-duplicates, -1 to 1 [0.997]."),
    ] = None,
    exact: Annotated[
        bool,
        typer.Option("--exact", help="Exact neighbour search (slower on HNSW and IVF indexes)."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON Lines, one group per line.")
    ] = False,
    sheet: Annotated[
        Path | None, typer.Option(help="Also draw the first groups as a PNG contact sheet.")
    ] = None,
    sheet_groups: Annotated[
        int | None, typer.Option(min=1, help="Groups drawn on the sheet [20].")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Near-duplicate groups: every two members at least --threshold similar (largest first)."""
    with user_errors():
        from simsearch.duplicates import check_threshold, draw_sheet
        from simsearch.progress import Reporter
        from simsearch.search_index import SearchIndex

        threshold = check_threshold(threshold)  # fail before any work
        if sheet is not None:
            from simsearch.figures.sheets import check_writable

            check_writable(sheet)
        index = SearchIndex.load(_index_dir(index_dir))
        if sheet is not None:
            index.images  # noqa: B018  (an index without images fails now, not after the search)
        result = index.duplicates(threshold, against=against, exact=exact, reporter=Reporter(quiet))
        for skipped in result.skipped:
            typer.echo(f"skipped {skipped['path']}: {skipped['error']}", err=True)
        if as_json:
            for group in result.groups:
                typer.echo(json.dumps(group.to_dict()))
        else:
            _duplicates_table(result.groups)
        members = sum(len(group.ids) for group in result.groups)
        compared = f"{result.items:,} items" + (
            f" and {result.against_items:,} from {against}" if against is not None else ""
        )
        typer.echo(
            f"{len(result.groups):,} group(s), {members:,} items, at similarity >= "
            f"{result.threshold:g} among {compared} ({result.seconds:.1f} s)",
            err=True,
        )
        if sheet is not None and result.groups:
            draw_sheet(result, sheet, sheet_groups)
            typer.echo(f"wrote {sheet}", err=True)
        elif sheet is not None:
            typer.echo(f"no groups: {sheet} not written", err=True)


def _duplicates_table(groups: list[DuplicateGroup]) -> None:
    if not groups:
        typer.echo("no near-duplicates")
        return
    against = groups[0].origins is not None
    typer.echo(f"{'group':>5}  {'similarity':>10}  " + ("from     " if against else "") + "id")
    for group in groups:
        origins = group.origins or ("",) * len(group.ids)
        for position, (item_id, similarity, origin) in enumerate(
            zip(group.ids, group.similarities, origins, strict=True)
        ):
            number = str(group.group) if position == 0 else ""
            value = "first" if position == 0 else f"{similarity:.5f}"
            where = f"{origin:<7}  " if against else ""
            typer.echo(f"{number:>5}  {value:>10}  {where}{item_id}")


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
        *_shards_line(index),
        f"created      {m.get('created_at')}"
        + (f", updated {m['updated_at']}" if m.get("updated_at") else ""),
        "versions     " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v),
        f"format       {m['format_version']}",
        "files",
    ]
    for name, entry in m["files"].items():
        lines.append(f"  {name:<22} {entry['bytes']:>12,} bytes  sha256 {entry['sha256'][:12]}")
    return lines


def _shards_line(index: dict[str, Any]) -> list[str]:
    sizes = index.get("shards")
    if not sizes:
        return []
    return [f"shards       {len(sizes)} ({', '.join(f'{n:,}' for n in sizes)} items)"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
