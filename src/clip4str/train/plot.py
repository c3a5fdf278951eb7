"""Draw a run's loss and validation curves from ``metrics.csv`` into a PNG (matplotlib, no display)."""

from __future__ import annotations

import math
from pathlib import Path

from clip4str.train.logs import CSV_NAME, read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plot training loss, learning rate and validation accuracy / 1-NED of ``run_dir`` against the step.

    Returns the PNG path (default ``RUN_DIR/curves.png``). Raises FileNotFoundError when the run has no
    ``metrics.csv`` and ValueError when it has no logged step yet.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    csv_path = run_dir / CSV_NAME if run_dir.is_dir() else run_dir
    if not csv_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {CSV_NAME}: is it a clip4str training run folder?")
    rows = read_metrics(csv_path)

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [
            (r["step"], r[key])
            for r in rows
            if isinstance(r.get("step"), int) and isinstance(r.get(key), float) and math.isfinite(r[key])
        ]
        return [p[0] for p in pts], [p[1] for p in pts]

    loss_x, loss_y = series("train_loss")
    if not loss_x:
        raise ValueError(f"{csv_path} has no training rows yet")
    out = Path(out) if out is not None else csv_path.parent / "curves.png"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    few = "o-" if len(loss_x) < 20 else "-"  # a line through one point draws nothing: mark short runs' points
    axes[0].plot(loss_x, loss_y, few, label="train loss")
    vx, vy = series("val_loss")
    if vx:
        axes[0].plot(vx, vy, "o-", label="val loss")
    axes[0].set_yscale("log")
    axes[0].set_title("loss")
    axes[0].legend()
    lx, ly = series("lr")
    dx, dy = series("decoder_lr")
    axes[1].plot(lx, ly, few, label="CLIP lr")
    if dx:
        axes[1].plot(dx, dy, few, label="decoder lr")
    axes[1].set_title("learning rate")
    axes[1].legend()
    ax, ay = series("val_accuracy")
    nx, ny = series("val_ned")
    if ax:
        axes[2].plot(ax, ay, "o-", label="accuracy %")
        axes[2].plot(nx, ny, "s--", label="1 - NED %")
        axes[2].legend()
    else:
        axes[2].text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set_title("validation")
    for a in axes:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
