"""Datasets, label rules, transforms, augmentation and the synthetic word renderer.

* :mod:`~clip4str.data.transforms`: image loading and the inference preprocessing (no heavy imports);
* :mod:`~clip4str.data.labels`: ``LabelFilter`` (the official label rules) and ``read_label_file``;
* :mod:`~clip4str.data.lmdb_dataset`: ``LmdbDataset``, ``LabelFileDataset``, ``build_dataset``;
* :mod:`~clip4str.data.lmdb_writer` / :mod:`~clip4str.data.lmdb_tools`: atomic writing, create and info;
* :mod:`~clip4str.data.augment`: the official RandAugment and the training transform;
* :mod:`~clip4str.data.synth`: synthetic word images into an LMDB.

See ``docs/data.md``.
"""
