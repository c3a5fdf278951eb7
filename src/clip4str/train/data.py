"""Training and validation data with a resumable, rank-sharded, seeded order.

Exact resumption needs the data order and the augmentation to be functions of (seed, epoch, position),
not of how far some iterator or worker RNG had got:

* :class:`EpochSampler` permutes the dataset with a generator seeded by ``seed + epoch`` (as
  ``DistributedSampler`` does), pads to a multiple of the world size, takes this rank's share, and can
  start an epoch at any batch. It yields ``(epoch, index)`` keys.
* :class:`SeededSamples` turns a key into a sample, drawing the augmentation from
  ``numpy.random.default_rng([seed, epoch, index])``: the same image gets the same augmentation whichever
  worker loads it, and no global RNG is touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from clip4str.config import ConfigError, ModelConfig
from clip4str.data.lmdb_dataset import LmdbConcatDataset, build_dataset
from clip4str.data.synth import RenderedWords
from clip4str.data.transforms import Preprocess
from clip4str.train.config import TrainConfig


class EpochSampler(Sampler):
    """This rank's ``(epoch, index)`` keys for one epoch, optionally starting at batch ``start_batch``.

    Args:
        num_samples: dataset length.
        batch_size: per-rank batch size (to turn ``start_batch`` into a sample offset).
        world_size, rank: data-parallel layout; every rank gets ``ceil(num_samples / world_size)`` keys.
        seed: base seed of the permutations.
        shuffle: permute (training) or keep the order.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_samples < 1:
            raise ValueError("EpochSampler: the dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler: rank {rank} outside world size {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    @property
    def per_rank(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation and the batch the next iteration starts at."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.batches_per_epoch}")
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch``, in order (the whole epoch)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        if total > len(order):  # pad by repeating the start, as DistributedSampler does
            order += (order * math.ceil(total / len(order)))[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.epoch_indices(self.epoch)[self.start_batch * self.batch_size :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start_batch * self.batch_size)


class SeededSamples(Dataset):
    """``dataset[(epoch, index)] -> (tensor, label)`` with augmentation drawn from (seed, epoch, index).

    ``base`` must return ``(PIL image, label)``; ``transform(img, rng)`` is a
    :class:`~clip4str.data.augment.TrainTransform` (or any callable taking a numpy Generator).
    """

    def __init__(self, base: Dataset, transform: Any, seed: int) -> None:
        self.base = base
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, str]:
        epoch, index = key
        img, label = self.base[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        return self.transform(img, rng), label


def _label_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.data
    return {
        "remove_whitespace": d.remove_whitespace,
        "normalize": "auto" if d.normalize_unicode else "none",
        "min_image_dim": d.min_image_dim,
    }


def build_synth_dataset(cfg: TrainConfig, model_cfg: ModelConfig) -> RenderedWords:
    """The words rendered while training (``data.synth``), over the training charset."""
    from clip4str.data.synth import SynthConfig, find_fonts, read_vocabulary

    s = cfg.data.synth
    fonts = [str(f) for f in find_fonts(s.fonts or None)]
    if not fonts:
        raise ConfigError(f"data.synth: no font files found in {s.fonts or 'the system font folders'}")
    synth_cfg = SynthConfig(
        charset=model_cfg.charset_train,
        words=read_vocabulary(s.vocab) if s.vocab else [],
        random_ratio=s.random_ratio if s.vocab else 1.0,
        max_length=min(s.max_length, model_cfg.max_label_length),
        fonts=fonts,
        seed=s.seed,
        **s.options,
    )
    return RenderedWords(synth_cfg, s.count)


def build_train_dataset(cfg: TrainConfig, model_cfg: ModelConfig) -> tuple[SeededSamples, LmdbConcatDataset]:
    """Every LMDB under ``data.train_root`` (labels filtered with the training charset, official rules),
    then the rendered words of ``data.synth``."""
    from clip4str.data.augment import TrainTransform

    roots = [root for root in cfg.data.train_root for _ in range(cfg.data.train_repeat.get(root, 1))]
    datasets, names = [], []
    if roots:
        lmdbs = build_dataset(
            roots,
            model_cfg.charset_train,
            model_cfg.max_label_length,
            transform=None,
            allow_empty=bool(cfg.data.synth.count),
            **_label_kwargs(cfg),
        )
        datasets, names = list(lmdbs.datasets), list(lmdbs.names)
    if cfg.data.synth.count:
        datasets.append(build_synth_dataset(cfg, model_cfg))
        names.append("synth (rendered)")
    base = LmdbConcatDataset(datasets, names)
    p = model_cfg.preprocess
    d = cfg.data
    transform = TrainTransform(
        p.image_size,
        p.mean,
        p.std,
        augment=d.augment and d.augment_layers > 0,
        magnitude=d.augment_magnitude,
        num_layers=max(d.augment_layers, 1),
    )
    return SeededSamples(base, transform, cfg.seed), base


def build_val_dataset(cfg: TrainConfig, model_cfg: ModelConfig) -> LmdbConcatDataset | None:
    """The LMDBs under ``data.val_root``, labels filtered with the *test* charset (as officially)."""
    if not cfg.data.val_root:
        return None
    return build_dataset(
        cfg.data.val_root,
        model_cfg.resolved_charset_test,
        model_cfg.max_label_length,
        transform=Preprocess(model_cfg.preprocess),
        **_label_kwargs(cfg),
    )


def val_subset(dataset: Dataset, max_samples: int, world_size: int, rank: int) -> Subset:
    """This rank's share of the validation set (no padding, so nothing is counted twice); with
    ``max_samples`` > 0, an evenly spaced selection of that many samples first."""
    n = len(dataset)  # type: ignore[arg-type]
    indices = list(range(n))
    if 0 < max_samples < n:
        indices = sorted({int(i) for i in np.linspace(0, n - 1, max_samples)})
    return Subset(dataset, indices[rank::world_size])


def make_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    sampler: Sampler | None = None,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader with its own generator, so creating iterators never draws from the global torch RNG."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
        generator=g,
        persistent_workers=False,
    )
