"""The Ray side of ``clip4str batch``: join or start Ray, and run the chunks through Ray Data's
``map_batches`` on a pool of model actors. The only module of the package that imports Ray.

One dataset row is one chunk (an aligned run of items: one forward pass, or one group of photos), so Ray
balances whole chunks over the actors and every chunk is read exactly as ``clip4str read`` reads it.
Rows stream back to the driver, which writes each shard as soon as all its rows are in.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from clip4str.batch.inputs import Item
from clip4str.errors import Clip4strError

__all__ = ["ChunkActor", "RayConnectError", "connect", "pool_size", "run_chunks"]

CONNECT_TIMEOUT_S = 5.0


class RayConnectError(Clip4strError, ConnectionError):
    """The Ray cluster named by ``--address`` / ``RAY_ADDRESS`` cannot be reached or joined."""


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as err:
        if err.name != "ray":
            raise
        raise Clip4strError(
            "clip4str batch needs Ray Data, which is not installed here: pip install 'clip4str[batch]'"
        ) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` or ``ray://host:port``; None for ``auto`` / ``local``."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        raise RayConnectError(f"--address {address!r}: expected host:port, ray://host:port or auto")
    return host.strip("[]") or "127.0.0.1", int(port)


_SAVED_HANDLERS: dict[int, Any] = {}


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray with this machine's cores
    (``num_cpus`` to use fewer). An already initialised Ray (a test, a notebook) is used as it is.
    Returns True when this call started Ray (the caller shuts it down). An address that cannot be reached
    is one :class:`RayConnectError` line within :data:`CONNECT_TIMEOUT_S` seconds."""
    loaded = sys.modules.get("ray")
    if loaded is not None and loaded.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    target = _host_port(address) if address else None
    if target is not None:  # before importing Ray (seconds): an unreachable address fails at once
        try:
            socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            reason = "timed out" if isinstance(err, socket.timeout) else (err.strerror or str(err))
            raise RayConnectError(
                f"cannot reach the Ray cluster at {address} ({reason}); check --address / RAY_ADDRESS, or "
                "leave both unset to start a local Ray"
            ) from None
    if address is not None:
        # Something that accepts connections but is no Ray head (a proxy, another service): Ray would retry
        # for 20 s, printing a warning a second: bound it to seconds.
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(int(CONNECT_TIMEOUT_S)))
    ray = _import_ray()
    # ray.init installs its own SIGTERM/SIGINT handlers in this process; shutdown() puts ours back
    _SAVED_HANDLERS.update({s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)})
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        return True
    with _stderr_kept_back() as replay:
        try:
            ray.init(address=address, **quiet)
        except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...: one line
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RayConnectError(f"cannot join the Ray cluster at {address}: {text}") from None
        replay.append(True)  # joined: what Ray printed meanwhile is shown after all
    return True


@contextlib.contextmanager
def _stderr_kept_back() -> Iterator[list[bool]]:
    """Hold back what is written to file descriptor 2 (Ray's C++ retry warnings, one a second) within the
    block; it is written out at the end only if the caller appends to the yielded list."""
    sys.stderr.flush()
    saved = os.dup(2)
    replay: list[bool] = []
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield replay
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if replay:
                held.seek(0)
                os.write(2, held.read(1 << 20))


def pool_size(
    workers: int | None, cpus_per_worker: float | None, gpus_per_worker: float
) -> tuple[int, float]:
    """(actors, CPUs per actor): given values, else one actor per GPU share, or on CPUs one single-threaded
    actor per core (a small model gains little from a second thread, and threads of one process collapse
    on a busy machine: docs/scale.md)."""
    ray = _import_ray()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = [float(n["Resources"].get("CPU", 0)) for n in nodes] or [1.0]
    node_gpus = [float(n["Resources"].get("GPU", 0)) for n in nodes]
    if gpus_per_worker > 0:
        total = sum(node_gpus)
        if total < gpus_per_worker:
            raise Clip4strError(
                f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has {total:g} GPU(s); use a cluster "
                "with GPUs, or read on CPUs (--gpus-per-worker 0)"
            )
        n = workers or max(1, int(total // gpus_per_worker))
        if cpus_per_worker is None:
            per_gpu = min(c / g for c, g in zip(node_cpus, node_gpus) if g > 0)
            cpus_per_worker = max(1.0, min(8.0, float(int(per_gpu * gpus_per_worker))))
        return n, cpus_per_worker
    if cpus_per_worker is None:
        cpus_per_worker = 1.0
    if workers is None:
        workers = max(1, int(sum(c // cpus_per_worker for c in node_cpus)))
    return workers, cpus_per_worker


class ChunkActor:
    """A Ray Data actor: loads the model once, then turns each batch of chunk rows into output rows."""

    def __init__(self, settings: dict[str, Any], threads: int | None) -> None:
        from clip4str.batch.work import ChunkWorker

        self.worker = ChunkWorker(settings, threads)

    def __call__(self, batch: Any) -> Any:
        from clip4str.batch.job import rows_table

        rows: list[dict[str, Any]] = []
        for chunk in batch.to_pylist():
            items = [
                Item(p, lmdb=db or None, key=key or None)
                for p, db, key in zip(chunk["paths"], chunk["lmdbs"], chunk["keys"])
            ]
            rows.extend(self.worker.read_chunk(items, chunk["start"]))
        return rows_table(rows)


def chunk_rows(items: list[Item], chunk: int, shards: list[range]) -> list[dict[str, Any]]:
    """One dataset row per chunk of the given shards' items."""
    rows = []
    for shard in shards:
        for start in range(shard.start, shard.stop, chunk):
            part = items[start : min(start + chunk, shard.stop)]
            rows.append(
                {
                    "start": start,
                    "paths": [it.path for it in part],
                    "lmdbs": [it.lmdb or "" for it in part],
                    "keys": [it.key or 0 for it in part],
                }
            )
    return rows


IMAGES_PER_BLOCK = 2048


def block_count(rows: list[dict[str, Any]], workers: int) -> int:
    """Dataset blocks for the chunk rows: about :data:`IMAGES_PER_BLOCK` images each (Ray Data spends
    milliseconds scheduling each block: 3,125 one-chunk blocks took 86 s for a no-op pass here, 64 blocks
    12.9 s), but at least 4 per actor so the work stays balanced, and never more than the chunks."""
    images = sum(len(r["paths"]) for r in rows)
    return max(1, min(len(rows), max(4 * workers, math.ceil(images / IMAGES_PER_BLOCK))))


def run_chunks(
    rows: list[dict[str, Any]],
    settings: dict[str, Any],
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    progress_bars: bool,
    calls_per_worker: int = 1,
) -> Iterator[Any]:
    """Run the chunk rows through the actor pool; yields pyarrow tables of output rows as they finish
    (in no particular order). ``calls_per_worker`` > 1 lets an actor decode one chunk's images while the
    model reads another (each call is still one whole chunk, so the numbers do not change)."""
    _import_ray()
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress_bars
    ctx.use_ray_tqdm = False  # plain tqdm bars in this (driver) process, on its terminal
    ctx.print_on_execution_start = progress_bars
    if not progress_bars:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    threads = max(1, int(cpus_per_worker))
    ds = ray.data.from_items(rows, override_num_blocks=block_count(rows, workers))
    ds = ds.map_batches(
        ChunkActor,
        fn_constructor_kwargs={"settings": settings, "threads": threads},
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(
            size=workers,
            max_concurrent_calls_per_actor=calls_per_worker,
            enable_true_multi_threading=calls_per_worker > 1,
        ),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker or None,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def shutdown(started: bool, flush: Callable[[], None] | None = None) -> None:
    """Shut Ray down if this command started it."""
    if flush is not None:
        flush()
    if started:
        ray = sys.modules.get("ray")
        if ray is not None:
            ray.shutdown()
    for signum, handler in _SAVED_HANDLERS.items():
        if handler is not None:
            signal.signal(signum, handler)
    _SAVED_HANDLERS.clear()
