"""What a batch job reads: INPUTS (folders, globs, files, manifests, LMDBs, object-storage URIs) → an
ordered list of :class:`Item`, and one item → image bytes or a decoded image, through the package's one
reader (:func:`clip4str.files.read_regular_file`, :func:`clip4str.data.transforms.load_image`).

No Ray here: the driver expands the inputs, the workers fetch items. The order of the list is the order
``clip4str read`` reads the same paths in (folders recursively and sorted, as :func:`expand_paths`), so the
batches, and the numbers, are the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip4str.errors import DatasetError, ImageReadError
from clip4str.files import MAX_IMAGE_BYTES, MAX_TEXT_BYTES, read_regular_file

__all__ = [
    "MANIFEST_SUFFIXES",
    "Item",
    "expand_inputs",
    "fetch_bytes",
    "items_digest",
    "load_item",
]

MANIFEST_SUFFIXES = {".txt", ".lst", ".list", ".csv", ".tsv", ".parquet", ".pq"}
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Item:
    """One image to read: a local path, a URI a pyarrow filesystem opens (``s3://``, ``gs://``, ``hdfs://``,
    ``file://``), or sample ``key`` (1-based) of the LMDB at ``lmdb``. ``path`` is what output rows show."""

    path: str
    lmdb: str | None = None
    key: int | None = None

    @property
    def kind(self) -> str:
        if self.lmdb is not None:
            return "lmdb"
        return "uri" if is_uri(self.path) else "file"


def is_uri(spec: str) -> bool:
    """``scheme://...`` (two or more letters, so a Windows drive is not one)."""
    head, sep, _ = spec.partition("://")
    return bool(sep) and len(head) > 1 and head.replace("+", "").isalnum()


def items_digest(items: Iterable[Item]) -> str:
    """SHA-256 of the item list (order included): a resumed job must read exactly the same list."""
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.path}\0{it.lmdb or ''}\0{it.key or 0}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ expanding
def expand_inputs(specs: list[str], column: str = "path") -> tuple[list[Item], list[str]]:
    """INPUTS → (items in order, problems): each spec is a folder (its images, recursively, sorted; or the
    LMDBs in it), a glob, an image file, a manifest (``.txt``/``.lst``: one path or URI a line; ``.csv``,
    ``.tsv``, ``.parquet``: the ``column`` column; relative paths are relative to the manifest's folder),
    an LMDB folder (``data.mdb``), or a URI (a file, or a prefix whose images are listed).

    A problem (a spec matching nothing, an unreadable manifest) is one line for the caller to report; a
    manifest's entries are never checked here (a missing file becomes an error row when it is read).
    """
    from clip4str.cli.read import expand_paths

    items: list[Item] = []
    problems: list[str] = []
    for spec in specs:
        try:
            if is_uri(spec) and Path(spec).suffix.lower() in MANIFEST_SUFFIXES:
                data = fetch_bytes(Item(spec), MAX_TEXT_BYTES, "manifest")
                items.extend(_parse_manifest(data, spec, spec.rsplit("/", 1)[0] + "/", column))
                continue
            if is_uri(spec) and not spec.startswith("file://"):
                items.extend(_expand_uri(spec))
                continue
            local = Path(spec[len("file://") :]) if spec.startswith("file://") else Path(spec)
            if local.is_dir() and _lmdb_folders(local):
                items.extend(_expand_lmdbs(local))
            elif local.is_file() and local.suffix.lower() in MANIFEST_SUFFIXES:
                items.extend(_read_manifest(local, column))
            elif spec.startswith("file://"):
                items.extend(_expand_uri(spec))
            else:
                found, unmatched = expand_paths([spec])
                if unmatched:
                    problems.append(f"{spec}: no such file, or no images in it")
                items.extend(Item(p) for p in found)
        except (OSError, ValueError) as err:
            problems.append(str(err))
    return items, problems


def _lmdb_folders(folder: Path) -> list[Path]:
    """The LMDBs at or under ``folder`` when it holds no images, else none (a folder of images wins)."""
    if (folder / "data.mdb").is_file():
        return [folder]
    if not any(True for _ in folder.rglob("data.mdb")):
        return []
    from clip4str.cli.read import expand_paths

    if expand_paths([str(folder)])[0]:
        return []
    from clip4str.data.lmdb_dataset import find_lmdbs

    return find_lmdbs(folder)


def _expand_lmdbs(folder: Path) -> Iterator[Item]:
    from clip4str.data.lmdb_dataset import open_lmdb, read_num_samples

    for root in _lmdb_folders(folder):
        with open_lmdb(root).begin() as txn:
            n = read_num_samples(txn, root)
        for key in range(1, n + 1):
            yield Item(f"{root}/image-{key:09d}", lmdb=str(root), key=key)


def _read_manifest(path: Path, column: str) -> list[Item]:
    data = read_regular_file(path, MAX_TEXT_BYTES, "manifest", DatasetError)
    return _parse_manifest(data, str(path), str(path.parent) + "/", column)


def _parse_manifest(data: bytes, path: str, base: str, column: str) -> list[Item]:
    """The items a manifest's bytes list; relative entries are joined to ``base`` (its folder)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".txt", ".lst", ".list"):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise DatasetError(
                f"manifest {path} is not UTF-8 text ({err.reason}); save it as UTF-8"
            ) from None
        entries = [line.strip() for line in text.splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    else:
        entries = _table_column(data, path, column, suffix)
    return [Item(e if is_uri(e) or Path(e).is_absolute() else base + e) for e in entries]


def _table_column(data: bytes, path: str, column: str, suffix: str) -> list[str]:
    """The ``column`` values of a CSV/TSV/Parquet manifest's bytes."""
    import pyarrow as pa

    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            schema = pq.read_schema(pa.BufferReader(data))
            if column not in schema.names:
                raise DatasetError(
                    f"manifest {path} has no column {column!r} (it has {', '.join(schema.names)}); "
                    "name it with --column"
                )
            table = pq.read_table(pa.BufferReader(data), columns=[column])
        else:
            import pyarrow.csv as pacsv

            delimiter = "\t" if suffix == ".tsv" else ","
            table = pacsv.read_csv(
                pa.BufferReader(data),
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(column_types={column: pa.string()}),
            )
            if column not in table.column_names:
                raise DatasetError(
                    f"manifest {path} has no column {column!r} (it has {', '.join(table.column_names)}); "
                    "name it with --column"
                )
    except DatasetError:
        raise
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DatasetError(f"manifest {path}: cannot read it as {suffix[1:].upper()} ({err})") from None
    values = table.column(column).to_pylist()
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


def _filesystem(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError/...: one line
        raise OSError(f"{uri}: no pyarrow filesystem opens it ({err})") from None


def _expand_uri(uri: str) -> list[Item]:
    """A URI naming a file → that file; a prefix → its images, recursively, sorted."""
    import pyarrow.fs as pafs

    from clip4str.cli.read import IMAGE_SUFFIXES

    fs, path = _filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [Item(uri)]
    if info.type != pafs.FileType.Directory:
        raise OSError(f"{uri}: no such file or folder")
    scheme = uri.split("://", 1)[0] + "://"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    names = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File and Path(i.path).suffix.lower() in IMAGE_SUFFIXES
    )
    if not names:
        raise OSError(f"{uri}: no images in it")
    return [Item(scheme + n) for n in names]  # file:// + /abs/x.png, s3:// + bucket/key


# ------------------------------------------------------------------------------------------------ fetching
def fetch_bytes(item: Item, max_bytes: int = MAX_IMAGE_BYTES, what: str = "image file") -> bytes:
    """The bytes of a file, URI or LMDB item, at most ``max_bytes`` (ImageReadError otherwise)."""
    if item.kind == "lmdb":
        from clip4str.data.lmdb_dataset import open_lmdb

        try:
            with open_lmdb(item.lmdb).begin() as txn:  # type: ignore[arg-type]
                raw = txn.get(f"image-{item.key:09d}".encode())
                data = None if raw is None else bytes(raw[: MAX_IMAGE_BYTES + 1])
        except (OSError, DatasetError) as err:
            raise ImageReadError(f"{item.path}: {err}") from None
        if data is None:
            raise ImageReadError(f"{item.path}: no such key in the LMDB")
        if len(data) > MAX_IMAGE_BYTES:
            raise ImageReadError(
                f"{item.path}: over the {MAX_IMAGE_BYTES >> 20} MiB limit for an image; not read"
            )
        return data
    if item.kind == "uri":
        import pyarrow.fs as pafs

        try:
            fs, path = _filesystem(item.path)
            info = fs.get_file_info(path)
        except Exception as err:  # noqa: BLE001 - any filesystem failure is this item's error
            raise ImageReadError(f"{item.path}: {err}") from None
        if info.type == pafs.FileType.NotFound:
            raise ImageReadError(f"{what} not found: {item.path}")
        if info.type == pafs.FileType.Directory:
            raise ImageReadError(f"{what} {item.path} is a directory, not a file")
        if info.type != pafs.FileType.File:
            raise ImageReadError(f"{what} {item.path} is not a regular file; refusing to read it")
        if info.size is not None and info.size > max_bytes:
            raise ImageReadError(
                f"{what} {item.path} is {info.size:,} bytes, over the {max_bytes >> 20} MiB limit; not read"
            )
        try:
            with fs.open_input_stream(path) as stream:
                data = stream.read(max_bytes + 1)
        except Exception as err:  # noqa: BLE001
            raise ImageReadError(f"cannot read {what} {item.path}: {err}") from None
        if len(data) > max_bytes:
            raise ImageReadError(f"{what} {item.path} is over the {max_bytes >> 20} MiB limit; not read")
        return data
    return read_regular_file(item.path, max_bytes, what, ImageReadError)


def load_item(item: Item) -> Any:
    """An RGB PIL image of ``item`` (ImageReadError naming it when it cannot be read or decoded)."""
    from clip4str.data.transforms import decode_image_bytes, load_image

    if item.kind == "file":
        return load_image(item.path)
    return decode_image_bytes(fetch_bytes(item), item.path)
