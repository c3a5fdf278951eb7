"""Training and fine-tuning (the only package that imports Lightning, and only inside ``Trainer.fit``).

* :mod:`~clip4str.train.config`: ``TrainConfig``, recipe presets, validation before any work.
* :mod:`~clip4str.train.trainer`: ``Trainer(cfg).fit()`` on Lightning Fabric (DDP, mixed precision,
  accumulation, validation, atomic resume checkpoints, own-format best/last models).
* :mod:`~clip4str.train.optim`, :mod:`~clip4str.train.data`, :mod:`~clip4str.train.init_model`,
  :mod:`~clip4str.train.state`, :mod:`~clip4str.train.logs`, :mod:`~clip4str.train.plot`,
  :mod:`~clip4str.train.metrics`: the parts.
"""
