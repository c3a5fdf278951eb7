"""Making an LMDB from images and a label file, and describing an LMDB (``clip4str lmdb create|info``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from clip4str.data.labels import LabelFilter, read_label_file
from clip4str.data.lmdb_dataset import find_lmdbs, open_lmdb, read_num_samples
from clip4str.data.lmdb_writer import LmdbWriter
from clip4str.data.transforms import decode_image_bytes
from clip4str.errors import DatasetError, ImageReadError


@dataclass
class CreateReport:
    """What ``create_lmdb`` wrote and skipped (``skipped``: (path, reason) pairs)."""

    out: Path
    written: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def create_lmdb(
    label_file: str | Path,
    out: str | Path,
    images_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> CreateReport:
    """Write the images listed in ``label_file`` with their labels into a new LMDB at ``out``.

    The original file bytes are stored (no re-encoding). Every image is decoded first; missing or
    undecodable ones are skipped and listed in the report. Labels are stored verbatim (the training
    rules are applied when reading). Writing is atomic (see :class:`LmdbWriter`).

    Only regular files of at most ``MAX_IMAGE_BYTES`` are read (a FIFO or a link to a device is skipped,
    never read); ``out`` may not contain the label file, the images folder or any listed image, and
    ``overwrite`` replaces only an LMDB folder.

    Raises:
        DatasetError: the label file is missing or malformed, ``out`` would hold an input, or no image
            could be read.
    """
    from clip4str.files import MAX_IMAGE_BYTES, read_regular_file
    from clip4str.progress import track

    records = read_label_file(label_file, images_dir)
    _check_not_an_input(Path(out), Path(label_file), images_dir, [p for p, _ in records])
    report = CreateReport(Path(out))
    with LmdbWriter(out, overwrite=overwrite) as writer:
        for path, label in track(records, desc="lmdb create", unit="img", enabled=progress):
            try:
                data = read_regular_file(path, MAX_IMAGE_BYTES, "image file", ImageReadError)
            except ImageReadError as err:
                report.skipped.append((path, f"cannot read: {err}"))
                continue
            try:
                decode_image_bytes(data, str(path))
            except ImageReadError as err:
                report.skipped.append((path, f"not a decodable image: {err.__cause__ or err}"))
                continue
            writer.add(data, label)
        if writer.count == 0:
            raise DatasetError(
                f"none of the {len(records)} images listed in {label_file} could be read "
                f"(first: {report.skipped[0][0]}: {report.skipped[0][1]}); check --images"
            )
    report.written = writer.count
    return report


def _check_not_an_input(
    out: Path, label_file: Path, images_dir: str | Path | None, images: list[Path]
) -> None:
    """``out`` must not be, or contain, the label file, the images folder or an image it lists."""
    target = out.resolve()
    folders = dict.fromkeys(p.parent for p in images)  # few distinct folders, however many images
    inputs = [label_file, *([Path(images_dir)] if images_dir is not None else []), *folders]
    for item in inputs:
        resolved = item.resolve()
        if resolved == target or target in resolved.parents:
            raise DatasetError(
                f"--out {out} would contain the input {item}; write the LMDB to a folder outside the images "
                "and the label file"
            )


@dataclass
class LmdbInfo:
    """Statistics of one LMDB, from its labels (and images with ``verify``)."""

    path: Path
    num_samples: int
    length_histogram: dict[int, int]
    chars: Counter[str]
    outside_charset: Counter[str] = field(default_factory=Counter)
    filter_counts: dict[str, int] = field(default_factory=dict)
    missing_labels: int = 0
    corrupt_images: list[int] | None = None

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "num_samples": self.num_samples,
            "length_histogram": self.length_histogram,
            "chars": dict(sorted(self.chars.items())),
            "outside_charset": dict(self.outside_charset.most_common()),
            "filter_counts": self.filter_counts,
            "missing_labels": self.missing_labels,
            "corrupt_images": self.corrupt_images,
        }


def lmdb_info(
    path: str | Path,
    charset: str | None = None,
    max_label_length: int = 25,
    verify: bool = False,
    progress: bool = False,
) -> list[LmdbInfo]:
    """Describe every LMDB at or under ``path``: sample count, label-length histogram, characters used.

    With ``charset``, also the characters outside it and what the training label rules would keep and
    drop (:class:`LabelFilter` defaults). With ``verify``, every image is decoded and the undecodable
    ones' indices are listed.
    """
    from clip4str.progress import track

    infos = []
    for folder in find_lmdbs(path):
        label_filter = LabelFilter(charset, max_label_length) if charset else None
        hist: Counter[int] = Counter()
        chars: Counter[str] = Counter()
        missing = 0
        corrupt: list[int] | None = [] if verify else None
        with open_lmdb(folder).begin() as txn:
            n = read_num_samples(txn, folder)
            for i in track(range(1, n + 1), desc=folder.name, unit="sample", enabled=progress):
                raw = txn.get(f"label-{i:09d}".encode())
                if raw is None:
                    missing += 1
                    continue
                label = raw.decode("utf-8", errors="replace")
                hist[len(label)] += 1
                chars.update(label)
                if label_filter is not None:
                    label_filter(label)
                if corrupt is not None:
                    data = txn.get(f"image-{i:09d}".encode())
                    try:
                        decode_image_bytes(data or b"")
                    except ImageReadError:
                        corrupt.append(i)
        counts = dict(label_filter.counts) if label_filter else {}
        outside: Counter[str] = Counter()
        if label_filter is not None:
            outside.update({c: k for c, k in chars.items() if not representable(c, label_filter)})
        infos.append(
            LmdbInfo(folder, n, dict(sorted(hist.items())), chars, outside, counts, missing, corrupt)
        )
    return infos


def representable(char: str, label_filter: LabelFilter) -> bool:
    """Whether the label rules map ``char`` to characters of the filter's charset (spaces count as yes)."""
    if char.isspace():
        return True
    out = label_filter.fold_case(label_filter.normalize_label(char))
    return bool(out) and all(c in label_filter.charset for c in out)


def format_info(info: LmdbInfo, width: int = 40) -> str:
    """Human-readable report of one :class:`LmdbInfo`."""
    lines = [f"{info.path}", f"  samples: {info.num_samples:,}"]
    if info.missing_labels:
        lines.append(f"  samples without a label key: {info.missing_labels:,}")
    if info.corrupt_images is not None:
        shown = ", ".join(str(i) for i in info.corrupt_images[:20])
        more = " ..." if len(info.corrupt_images) > 20 else ""
        lines.append(
            f"  undecodable images: {len(info.corrupt_images):,}"
            + (f" (indices {shown}{more})" if shown else "")
        )
    lines.append("  label length histogram:")
    top = max(info.length_histogram.values(), default=1)
    for length, n in info.length_histogram.items():
        lines.append(f"    {length:3d} {n:9,} {'#' * max(1, round(width * n / top))}")
    used = "".join(sorted(info.chars))
    lines.append(f"  characters used ({len(info.chars)}): {used!r}")
    if info.filter_counts:
        c = info.filter_counts
        lines.append(
            "  label rules: kept {:,} of {:,}; dropped too_long {:,}, empty {:,}; "
            "characters removed from {:,}".format(
                c.get("kept", 0),
                c.get("seen", 0),
                c.get("too_long", 0),
                c.get("empty", 0),
                c.get("chars_removed", 0),
            )
        )
        outside = "".join(ch for ch, _ in info.outside_charset.most_common())
        lines.append(f"  characters outside the charset ({len(info.outside_charset)}): {outside!r}")
    return "\n".join(lines)
