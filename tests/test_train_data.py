"""Resumable data order and seeded augmentation."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from clip4str.train.data import EpochSampler, SeededSamples, make_loader, val_subset


def test_ranks_split_each_epoch_and_epochs_differ() -> None:
    samplers = [EpochSampler(10, batch_size=2, world_size=3, rank=r, seed=5) for r in range(3)]
    keys = [list(s) for s in samplers]
    assert all(len(k) == 4 for k in keys)  # ceil(10 / 3), padded like DistributedSampler
    indices = [i for k in keys for _, i in k]
    assert set(indices) == set(range(10)) and len(indices) == 12
    again = list(EpochSampler(10, 2, 3, 0, seed=5))
    assert again == keys[0]
    samplers[0].set_epoch(1)
    assert [i for _, i in samplers[0]] != [i for _, i in keys[0]]
    assert all(e == 1 for e, _ in samplers[0])


def test_start_batch_resumes_the_same_epoch_order() -> None:
    s = EpochSampler(23, batch_size=4, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_batch=3)
    assert list(s) == full[12:] and len(s) == len(full) - 12
    assert s.batches_per_epoch == 6


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        return Image.new("RGB", (8, 4), (i * 10, 0, 0)), f"w{i}"


def _augment(img, rng: np.random.Generator) -> torch.Tensor:
    return torch.tensor(np.asarray(img, dtype=np.float32).mean() + rng.random())


def test_augmentation_depends_on_epoch_and_index_not_on_workers() -> None:
    ds = SeededSamples(_Images(), _augment, seed=3)
    sampler = EpochSampler(6, batch_size=2, seed=0)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    single = [x for x, _ in make_loader(ds, 2, 0, sampler=sampler)]
    assert torch.equal(state, torch.get_rng_state())  # the global torch RNG is untouched
    multi = [x for x, _ in make_loader(ds, 2, 2, sampler=sampler)]
    assert all(torch.equal(a, b) for a, b in zip(single, multi))
    sampler.set_epoch(1)
    other = [x for x, _ in make_loader(ds, 2, 0, sampler=sampler)]
    assert not all(torch.equal(a, b) for a, b in zip(single, other))


def test_val_subset_shards_without_duplicates() -> None:
    data = list(range(11))
    shards = [list(val_subset(data, 0, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == data
    few = sorted(sum((list(val_subset(data, 5, 2, r)) for r in range(2)), []))
    assert len(few) == 5 and few[0] == 0 and few[-1] == 10


def test_validation_sums_add_across_ranks_like_one_pass() -> None:
    from clip4str.evaluate import DatasetResult, score
    from clip4str.train.metrics import pack, unpack

    preds, gts, conf = ["abc", "ab", "", "xyz"], ["abc", "abd", "", "xy"], [0.9, 0.5, 0.25, 0.75]
    whole = score(preds, gts, conf)
    merged, loss = unpack(
        [
            x + y
            for x, y in zip(
                pack(score(preds[:1], gts[:1], conf[:1]), 0.8, 4),
                pack(score(preds[1:], gts[1:], conf[1:]), 4.2, 6),
            )
        ]
    )
    assert merged.metrics() | {"dataset": ""} == whole.metrics() | {"dataset": ""}
    assert merged.accuracy == 50.0 and loss == (0.8 + 4.2) / 10
    empty, no_loss = unpack(pack(DatasetResult("val"), 0.0, 0))
    assert math.isnan(empty.accuracy) and math.isnan(empty.one_minus_ned) and math.isnan(no_loss)


def test_training_set_with_rendered_words_only(tmp_path) -> None:
    import pytest

    from clip4str.config import ConfigError
    from clip4str.data.synth import find_fonts
    from clip4str.train.config import TrainConfig, resolve_model_config
    from clip4str.train.data import build_train_dataset

    fonts = [str(f) for f in find_fonts()][:2]
    vocab = tmp_path / "words.txt"
    vocab.write_text("Exit\nopen\nPARKING\n", encoding="utf-8")
    cfg = TrainConfig.from_dict(
        {
            "model_preset": "tiny",
            "max_steps": 1,
            "charset_train": "94",
            "data": {"synth": {"count": 40, "vocab": str(vocab), "fonts": fonts, "random_ratio": 0.0}},
        }
    )
    cfg.validate(check_paths=False)
    samples, base = build_train_dataset(cfg, resolve_model_config(cfg))
    assert len(samples) == 40 and base.names == ["synth (rendered)"]
    image, label = samples[(0, 3)]
    assert image.shape[0] == 3 and label.lower() in {"exit", "open", "parking"}
    empty = TrainConfig.from_dict({"model_preset": "tiny", "max_steps": 1})
    with pytest.raises(ConfigError, match="no training data"):
        empty.validate(check_paths=False)
