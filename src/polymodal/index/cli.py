"""`polymodal index build|add|remove|info`, `polymodal search` and `polymodal serve`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..data.schema import printable_path

index_app = typer.Typer(no_args_is_help=True, help="Build, extend and inspect embedding indexes.")
console = Console()

RAY_HELP = "Encode on a Ray actor pool (a local Ray instance unless --ray-address is given)."
ADDRESS_HELP = "Ray cluster to join (e.g. ray://head:10001 or auto); implies --ray."


MEDIA_HELP = ("auto: every image and audio file the model can embed (audio needs a model with an audio tower); "
              "image or audio: only those files.")


def _build(source: Path, out: Path, model: str | None, kind: str, batch_size: int, shard_size: int,
           workers: int | None, ray: bool, ray_address: str | None, ray_actors: int, strict: bool,
           device: str, media: str) -> None:
    from .pipeline import BuildConfig, build_index

    if min(batch_size, shard_size, ray_actors) < 1:
        raise typer.BadParameter("--batch-size, --shard-size and --ray-actors must be >= 1")
    if media not in ("auto", "image", "audio"):
        raise typer.BadParameter(f"--media must be auto, image or audio (not '{media}')")
    cfg = BuildConfig(source=str(source), out=str(out), model=model, kind=kind, media=media, batch_size=batch_size,
                      shard_size=shard_size, workers=workers,
                      ray=ray_address or ("local" if ray else None), ray_actors=ray_actors, strict=strict,
                      device=device)
    report = build_index(cfg)
    console.print(report.summary(), highlight=False, markup=False, soft_wrap=True)  # file names stay whole


@index_app.command("build")
def build_cmd(
    source: Path = typer.Argument(..., help="Folder of images and audio files (captions from sidecar .txt), "
                                  "one file, or a dataset."),
    model: str = typer.Option(..., help="Model: a checkpoint directory or anything `polymodal.load` accepts."),
    out: Path = typer.Option(..., help="Index directory (created; rerun the same command to resume)."),
    kind: str = typer.Option("auto", help="auto, flat (exact), sq8, fp16, hnsw, ivf or ivfpq."),
    media: str = typer.Option("auto", help=MEDIA_HELP),
    batch_size: int = typer.Option(64, help="Files a forward pass."),
    shard_size: int = typer.Option(1024, help="Items a shard file (a kill loses at most one unwritten shard)."),
    workers: int | None = typer.Option(None, help="Decoding threads (default: cores the encoder leaves free)."),
    ray: bool = typer.Option(False, "--ray", help=RAY_HELP),
    ray_address: str | None = typer.Option(None, help=ADDRESS_HELP),
    ray_actors: int = typer.Option(2, help="Model replicas in the Ray actor pool."),
    strict: bool = typer.Option(False, help="Stop at the first unreadable file instead of skipping it."),
    device: str = typer.Option("cpu", help="Device for local encoding."),
):
    """Embed a collection into a new index, or resume an interrupted build."""
    _build(source, out, model, kind, batch_size, shard_size, workers, ray, ray_address, ray_actors, strict, device,
           media)


@index_app.command("add")
def add_cmd(
    index: Path = typer.Argument(..., help="Existing index directory."),
    source: Path = typer.Argument(..., help="Files, folder or dataset to add."),
    media: str = typer.Option("auto", help=MEDIA_HELP),
    batch_size: int = typer.Option(64),
    shard_size: int = typer.Option(1024),
    workers: int | None = typer.Option(None),
    ray: bool = typer.Option(False, "--ray", help=RAY_HELP),
    ray_address: str | None = typer.Option(None, help=ADDRESS_HELP),
    ray_actors: int = typer.Option(2),
    strict: bool = typer.Option(False),
    device: str = typer.Option("cpu"),
):
    """Add files to an index with the model that built it (files already there are left alone)."""
    from .store import Index

    if not (index / "manifest.json").is_file():
        Index.open(index)  # raises the one-line "not a polymodal index" error
    _build(source, index, None, "auto", batch_size, shard_size, workers, ray, ray_address, ray_actors, strict, device,
           media)


@index_app.command("remove")
def remove_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    paths: list[Path] = typer.Argument(..., help="Files (or folders: everything under them) to remove."),
):
    """Remove items from an index by path."""
    from .store import Index

    with Index.open(index) as idx:
        targets = [str(p.resolve()) for p in paths]
        under = [t for t, p in zip(targets, paths) if p.is_dir()]
        prefixes = [t.rstrip("/") + "/" for t in under]
        matches = {r[0] for p in prefixes for r in idx.db.execute(
            "SELECT path FROM items WHERE substr(path, 1, ?) = ?", (len(p), p))}
        removed = idx.remove(sorted(set(targets) | matches))
        console.print(f"removed {removed} item(s); index holds {len(idx)}")


@index_app.command("info")
def info_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    skipped: bool = typer.Option(False, "--skipped", help="List every skipped file with its reason."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """What an index holds: model, dimension, kind, item counts, skipped files."""
    from .store import Index

    with Index.open(index) as idx:
        info = idx.info()
        if json_out:
            print(json.dumps(info, indent=2))
        else:
            for key, value in info.items():
                console.print(f"{key:>12}: {value}", highlight=False)
        if skipped:
            for path, reason in idx.skipped():
                console.print(f"  {printable_path(path)}: {reason}", highlight=False, markup=False, soft_wrap=True)


def search_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    query: str | None = typer.Argument(None, help="Text query (or use --image or --audio)."),
    image: Path | None = typer.Option(None, help="Image query: find similar images (or matching recordings)."),
    audio: Path | None = typer.Option(None, help="Audio query (wav, flac, mp3, ogg): find what it sounds like or "
                                      "says; the model needs an audio tower."),
    k: int = typer.Option(10, "-k", "--k", min=1, help="Results."),
    model: str | None = typer.Option(None, help="Model (default: the one that built the index)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    grid: Path | None = typer.Option(None, help="Also write a contact sheet of the results (PNG)."),
):
    """Search an index with a text, an image or an audio clip."""
    from .. import load
    from .store import Index

    if sum(q is not None for q in (query, image, audio)) != 1:
        raise typer.BadParameter("give a text query, --image PATH or --audio PATH (one of them)")
    with Index.open(index) as idx:
        encoder = load(model or idx.manifest["model"])
        hits = idx.search(encoder, text=query, image=image, audio=audio, k=k)
    title = repr(query) if query is not None else str(image or audio)
    if json_out:
        print(json.dumps([h.to_json() for h in hits], indent=2))
    else:
        print_hits(hits, title)
    if grid:
        from .grid import contact_sheet

        contact_sheet(hits, grid, title=query or f"like {(image or audio).name}")
        if not json_out:
            console.print(f"grid: {grid}")


def print_hits(hits, title: str) -> None:
    table = Table(title=title)
    for col in ("rank", "score", "modality", "path", "caption"):
        table.add_column(col, justify="right" if col in ("rank", "score") else "left")
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), f"{hit.score:.3f}", hit.modality, hit.path, hit.caption or "")
    console.print(table)


def serve_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    host: str = typer.Option("127.0.0.1", help="Interface; anything beyond loopback requires --api-key."),
    port: int = typer.Option(8000),
    api_key: str | None = typer.Option(None, envvar="POLYMODAL_API_KEY", help="Required in X-API-Key or Bearer."),
    max_upload_mb: float = typer.Option(10.0, help="Largest accepted upload."),
    model: str | None = typer.Option(None, help="Model (default: the one that built the index)."),
    workers: int = typer.Option(1, min=1, help="Server processes sharing the port (each loads the model)."),
    threads: int = typer.Option(1, min=0, help="Torch and BLAS threads for inference, per worker (0: torch's own)."),
    max_batch: int = typer.Option(32, min=1, help="Most queries encoded in one forward pass."),
    max_wait_ms: float = typer.Option(2.0, min=0, help="Longest a batch waits for as many queries as the last held."),
    generator: str | None = typer.Option(None, help="A captioner or chat model for POST /caption and /chat, or a "
                                    "text-to-image pipeline for POST /generate."),
):
    """Serve an index over HTTP: REST API, OpenAPI docs at /docs, a search page at /."""
    from ..server.config import ServerConfig
    from ..server.run import serve

    cfg = ServerConfig(index=str(index), model=model, api_key=api_key, host=host,
                       max_upload_bytes=int(max_upload_mb * 2**20), workers=workers, threads=threads or None,
                       max_batch=max_batch, max_wait_ms=max_wait_ms, generator=generator)
    console.print(f"serving {index} on http://{host}:{port}  (docs: /docs)")
    serve(cfg, port)
