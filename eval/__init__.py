"""The transfer-evaluation battery: frozen features, kNN, linear probes, SVMs, suites.

Never imports ``methods/`` or ``trainer/``: a checkpoint plus the backbone registry is
all it needs. Entry point: ``python eval/run_all.py CKPT --suite paper|fast|mini``.
"""
