"""Benchmarks (``python -m bench.<name>``): not tests; each prints ratios against a baseline
measured in the same run.

OpenBLAS's threads sleep at once after a call here as in the server (gunicorn.conf.py sets
the same ``OPENBLAS_THREAD_TIMEOUT``, before NumPy is imported): a bench that runs the engine
in-process as its baseline would otherwise leave two threads spinning for ~0.1 s on the cores
the server under test needs for the next row.
"""

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
