"""clip4str plot draws what a run logged, even a run of one logged step."""

from __future__ import annotations

import numpy as np
from PIL import Image

from clip4str.train.plot import plot_run


def test_a_single_logged_step_is_drawn(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,train_loss,lr,decoder_lr\n20,5.5,1e-4,1e-4\n")
    pixels = np.asarray(Image.open(plot_run(run)).convert("RGB")).astype(int)
    blue = (
        (abs(pixels[..., 0] - 0x1F) < 30)
        & (abs(pixels[..., 1] - 0x77) < 30)
        & (abs(pixels[..., 2] - 0xB4) < 30)
    )
    left_panel = blue[:, : pixels.shape[1] // 3]
    # the legend's line sample is ~40 px of blue; the point's marker adds a filled disc
    assert left_panel.sum() > 60
