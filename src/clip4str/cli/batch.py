"""``clip4str batch``: read many images on Ray Data (a local Ray, or a cluster) into resumable shards."""

from __future__ import annotations

import argparse
import sys
import time

PROG = "clip4str batch"


def run(args: argparse.Namespace) -> int:
    from clip4str.batch.inputs import expand_inputs, items_digest
    from clip4str.batch.job import FORMATS, JobFolder, Plan, shard_size_for
    from clip4str.batch.work import PHOTOS_PER_CHUNK, worker_settings
    from clip4str.cli._signals import sigterm_as_interrupt
    from clip4str.cli.read import decoding_changes
    from clip4str.decoding import DecodeOptions
    from clip4str.files import OutputGuard

    parser = args.command_parser
    if args.gpus_per_worker < 0 or (args.workers is not None and args.workers < 1):
        parser.error("--workers must be at least 1 and --gpus-per-worker at least 0")
    if args.calls_per_worker is not None and args.calls_per_worker < 1:
        parser.error("--calls-per-worker must be at least 1")
    if args.cpus_per_worker is not None and args.cpus_per_worker <= 0:
        parser.error("--cpus-per-worker must be above 0")
    if args.device is None:
        args.device = "cuda" if args.gpus_per_worker > 0 else "cpu"
    elif args.device.startswith("cuda") and args.gpus_per_worker <= 0:
        parser.error("--device cuda needs --gpus-per-worker (Ray gives a worker only the GPUs it asks for)")
    changes = decoding_changes(args)  # checked here (and --charset-test read once, here)
    DecodeOptions().replace(**changes)
    log_every = args.log_every

    # -- what to read, where to write: all checked before Ray starts or a model loads
    items, problems = expand_inputs(args.inputs, args.column)
    for line in problems:
        print(f"{PROG}: {line}", file=sys.stderr)
    if not items:
        print(f"{PROG}: error: nothing to read", file=sys.stderr)
        return 1
    guard = OutputGuard(PROG)
    guard.protect_all([s for s in args.inputs if "://" not in s], "an input (INPUTS)")
    guard.protect_model(args.model)
    chunk = PHOTOS_PER_CHUNK if args.detect else args.batch_size
    settings = worker_settings(args, changes["charset_test"])
    plan = Plan(
        inputs=list(args.inputs),
        items=len(items),
        items_sha256=items_digest(items),
        chunk=chunk,
        shard_size=shard_size_for(args.shard_size, chunk),
        format=args.format,
        detect=bool(args.detect),
        model=args.model or "clip4str-small",
        settings={k: v for k, v in settings["args"].items() if k != "compile"}
        | {"orientation": settings["orientation"] if args.detect else None},
    )
    job = JobFolder(args.out, plan, guard)
    if args.detect:
        from clip4str.detect import as_detector

        as_detector(None)  # a missing [detect] extra fails now, in one line
    if args.runtime != "onnx":
        from clip4str.hub import resolve_model

        resolve_model(plan.model)  # an unknown model fails now, not in every worker
    finished = job.open()
    todo = [k for k in range(plan.shards) if k not in finished]
    skipped_rows = sum(len(plan.shard_items(k)) for k in finished)
    print(
        f"{PROG}: {plan.items:,} images in {plan.shards} shard(s) of {plan.shard_size:,} → {args.out} "
        f"({FORMATS[plan.format]})"
        + (f"; {len(finished)} shard(s) already done, skipped" if finished else ""),
        file=sys.stderr,
    )
    if not todo:
        print(f"{PROG}: nothing left to do; every shard is in {args.out}", file=sys.stderr)
        return 0

    from clip4str.batch import ray_job
    from clip4str.progress import ProgressBar

    tty = _is_terminal(sys.stderr) and not args.quiet
    started = False
    start = time.monotonic()
    remaining = plan.items - skipped_rows
    with sigterm_as_interrupt():
        try:
            started = ray_job.connect(args.address, args.num_cpus)
            workers, cpus = ray_job.pool_size(args.workers, args.cpus_per_worker, args.gpus_per_worker)
            print(
                f"{PROG}: {workers} worker(s), {cpus:g} CPU(s)"
                + (f" and {args.gpus_per_worker:g} GPU(s)" if args.gpus_per_worker else "")
                + f" each, model {plan.model} on {args.device}",
                file=sys.stderr,
            )
            rows = ray_job.chunk_rows(items, chunk, [plan.shard_items(k) for k in todo])
            del items
            with ProgressBar(
                total=remaining,
                desc=PROG,
                unit="img",
                enabled=not tty and not args.quiet,
                plain=True,
                interval=log_every,
            ) as bar:
                calls = args.calls_per_worker or (2 if args.gpus_per_worker > 0 else 1)
                stream = ray_job.run_chunks(rows, settings, workers, cpus, args.gpus_per_worker, tty, calls)
                for table in stream:
                    written = job.add(table)
                    bar.update(table.num_rows)
                    bar.set_postfix(shards=f"{len(job.finished)}/{plan.shards}", errors=job.errors_written)
                    for k in written:
                        if args.verbose:
                            bar.write(f"{PROG}: wrote shard {k}")
        finally:
            ray_job.shutdown(started)
    if job.unfinished_rows:
        print(f"{PROG}: error: {job.unfinished_rows} rows did not complete their shards", file=sys.stderr)
        return 1
    seconds = time.monotonic() - start
    print(
        f"{PROG}: done: {job.rows_written:,} rows in {len(todo)} shard(s), {job.errors_written:,} error row(s), "
        f"{seconds:.1f} s ({job.rows_written / max(seconds, 1e-9):.1f} img/s) → {args.out}",
        file=sys.stderr,
    )
    return 0


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def register(subparsers: argparse._SubParsersAction) -> None:
    from clip4str.cli.read import add_decoding_arguments, add_runtime_argument

    parser = subparsers.add_parser(
        "batch",
        help="read many images on Ray Data (local or a cluster) into resumable Parquet shards",
        description="Read folders, globs, manifests (.txt; .csv/.parquet column), LMDBs or object-storage URIs "
        "(s3://...) on Ray Data: a pool of model actors, a local Ray unless --address or RAY_ADDRESS names a "
        "cluster. Rows (path, text, confidence, char_probs, words with boxes for --detect, error, model, "
        "options) go to OUT/part-NNNNN.parquet; a job started again with the same --out skips finished "
        "shards. Texts and confidences equal clip4str read's (docs/scale.md).",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="folder, glob, image, manifest, LMDB or URI"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="results folder (empty, new, or this job's)"
    )
    parser.add_argument("--format", choices=["parquet", "jsonl"], default="parquet", help="shard format")
    parser.add_argument(
        "--column", default="path", help="the path column of a .csv/.tsv/.parquet manifest (default: path)"
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=4096,
        help="images per shard (rounded up to whole batches; default 4096)",
    )
    add_decoding_arguments(parser)
    parser.set_defaults(device=None)
    add_runtime_argument(parser)
    parser.add_argument(
        "--charset-test", default=None, help="as clip4str read --charset-test (a preset, file or characters)"
    )
    ray = parser.add_argument_group("Ray")
    ray.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster (host:port, ray://host:port or auto; default: $RAY_ADDRESS, else a "
        "local Ray with this machine's cores)",
    )
    ray.add_argument(
        "--workers",
        type=int,
        default=None,
        help="model actors (default: one per GPU share, or on CPUs one per core)",
    )
    ray.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor (default 0: CPU)")
    ray.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="CPUs per actor: its torch threads (as read --threads) and decoding threads (default: 1 on CPUs; a node's CPUs per GPU, up to 8, with GPUs)",
    )
    ray.add_argument(
        "--calls-per-worker",
        type=int,
        default=None,
        help="chunks an actor works on at once, so image decoding overlaps the model (default: 2 with GPUs, "
        "1 on CPUs, where both would share the same cores)",
    )
    ray.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument(
        "--log-every",
        type=float,
        default=30.0,
        help="seconds between progress lines when stderr is not a "
        "terminal (default 30; a terminal shows Ray Data's progress bars)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or lines")
    parser.add_argument("--verbose", action="store_true", help="a line per shard written")
    photos = parser.add_argument_group("whole photos (pip install 'clip4str[detect]')")
    photos.add_argument(
        "--detect", action="store_true", help="find the words in whole photos first, then read each (as read)"
    )
    photos.add_argument(
        "--orientation", choices=["auto", "none"], default="auto", help="as clip4str read --orientation"
    )
    parser.set_defaults(handler=run)
