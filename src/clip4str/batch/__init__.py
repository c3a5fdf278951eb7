"""Batch inference on Ray Data: ``clip4str batch INPUTS --out RESULTS/`` (docs/scale.md).

Ray is an optional extra (``pip install 'clip4str[batch]'``) imported only by :mod:`clip4str.batch.ray_job`;
the input listing (:mod:`~clip4str.batch.inputs`), the job folder and shards (:mod:`~clip4str.batch.job`)
and the per-chunk reading (:mod:`~clip4str.batch.work`) import without it.
"""
