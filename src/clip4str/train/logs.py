"""Run logs: ``metrics.csv`` (one row per logged step), TensorBoard events, and a progress bar.

On resume, rows and events after the resumed step (written by the interrupted run after its last
checkpoint) are dropped, so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("clip4str.train")

CSV_NAME = "metrics.csv"
PROGRESS_INTERVAL_S = 30.0  # seconds between plain progress lines (no terminal, or --quiet)
COLUMNS = (
    "step",
    "epoch",
    "train_loss",
    "lr",
    "decoder_lr",
    "images_per_s",
    "grad_norm",
    "val_loss",
    "val_accuracy",
    "val_ned",
    "time",
    "wall_s",
)


class MetricsCsv:
    """Append-only CSV of :data:`COLUMNS`; empty cells where a row has no value."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is not None and self.path.is_file():
            rows = read_metrics(self.path)
            kept = [r for r in rows if r.get("step") is not None and r["step"] <= resume_step]
            self._rewrite(kept)
        elif not self.path.is_file() or resume_step is None:
            self._rewrite([])

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})

    def write(self, **values: Any) -> None:
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown metrics column(s): {sorted(unknown)}")
        values.setdefault("time", round(time.time(), 3))
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(
                {k: ("" if values.get(k) is None else values[k]) for k in COLUMNS}
            )


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.csv`` as dicts of floats (``step``/``epoch`` as ints, missing cells as None).

    Cells that are not numbers are kept as strings (a torn last line of a killed run); a file that is not
    a metrics CSV, or a row whose step is not a number, raises ValueError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {CSV_NAME} at {path}")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "step" not in reader.fieldnames:
                raise ValueError(f"{path} is not a clip4str {CSV_NAME}: its header has no 'step' column")
            for raw in reader:
                row: dict[str, Any] = {}
                for k, v in raw.items():
                    if k is None or isinstance(v, list):
                        continue  # cells beyond the header
                    if v in ("", None):
                        row[k] = None
                    elif k in ("step", "epoch"):
                        try:
                            row[k] = int(float(v))
                        except (ValueError, OverflowError):
                            raise ValueError(
                                f"{path}:{reader.line_num}: {k} {v[:40]!r} is not a number"
                            ) from None
                    else:
                        try:
                            row[k] = float(v)
                        except ValueError:
                            row[k] = v
                rows.append(row)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a UTF-8 text CSV file ({err.reason})") from None
    except csv.Error as err:
        raise ValueError(f"{path}: malformed CSV ({err})") from None
    return rows


class TensorBoard:
    """A ``SummaryWriter`` when tensorboard is installed; otherwise a no-op with one warning."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is in the train extra
            log.warning("tensorboard is not installed; TensorBoard logs are off (pip install tensorboard)")
            self.writer = None
            return
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, step: int, **values: float | None) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if value is not None:
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """Progress over optimizer steps on stderr (rank 0 only) with loss, learning rate and images/s: a tqdm
    bar on a terminal (``bar=True``), else a plain line every ``interval`` seconds, never silent between
    validations."""

    def __init__(
        self, total: int, initial: int, enabled: bool, bar: bool = True, interval: float | None = None
    ) -> None:
        from clip4str.progress import ProgressBar

        self.bar = ProgressBar(
            total=total,
            initial=initial,
            unit="step",
            desc="train",
            enabled=enabled,
            plain=not bar,
            interval=PROGRESS_INTERVAL_S if interval is None else interval,
            smoothing=0.05,
        )

    def update(self, loss: float, lr: float, images_per_s: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
        self.bar.update(1)

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
