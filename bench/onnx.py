"""Imported ONNX models against onnxruntime on the same file, in process, same batch, same
run:

    .venv/bin/python -m bench.onnx [--rounds 7] [--batch 64] [--quick]

The fixtures exported from PyTorch (tests/fixtures/onnx): the 784-256-10 MLP and the small
CNN (Conv, ReLU, BatchNorm, MaxPool, Conv, GlobalAveragePool, Linear). Each is imported
once (``import_model`` + ``compile_model``, as registration does) and run in float32, its
own element type:

- gradserve forward alone (``execute`` with ``wrt=[]``) ÷ onnxruntime's forward
  (``InferenceSession.run``, CPU provider, default threads): goal ≤ 1.3×;
- gradserve forward + input gradient (``wrt="inputs"``, an upstream of the output's shape)
  ÷ onnxruntime's forward: goal ≤ 2.5× (the theory is about 2×: a backward pass costs about
  one forward);
- the same two with the parameters given as request values, arrays of their own: a
  check on the stored parameters, views of the packed bytes (each tensor at a multiple
  of 64 bytes, so an aligned array; an unaligned one is taken off BLAS by NumPy's
  matmul), which should cost no more than these;
- also: the exported gradient model (``GET /v1/graphs/{id}/onnx?gradients=true``'s bytes)
  run by onnxruntime ÷ onnxruntime's forward, for scale.

Both sides run on one thread (``--threads``; onnxruntime's ``intra_op_num_threads`` and
OpenBLAS's thread count, set before NumPy loads): on a shared machine a BLAS thread pool
that spins for cores other work holds swings by 5x from run to run, and one thread each
is the like-for-like comparison. Rows alternate round by round
(``bench.engine.round_robin``); the table shows the median per call and the paired ratio
(median over rounds of the row ÷ onnxruntime's forward in the same round). Not a test:
nothing asserts a speed.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # before NumPy loads: its BLAS reads this once
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
    os.environ.setdefault("OPENBLAS_NUM_THREADS", _threads)

import argparse  # noqa: E402 - after the BLAS thread count
import statistics  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bench.engine import calls_for, round_robin  # noqa: E402
from service.engine import REGISTRY, Query, execute  # noqa: E402
from service.engine.onnx import compile_model, import_model  # noqa: E402
from service.engine.onnx.export import Export, export_model  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "onnx"
CASES = {"mlp784": (784,), "cnn": (1, 12, 12)}


def session(data: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # no warning per overridable initializer
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def rows(name: str, batch: int, threads: int) -> dict[str, Callable[[], Any]]:
    data = (FIXTURES / f"{name}.onnx").read_bytes()
    plan = compile_model(import_model(data), REGISTRY)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *CASES[name])).astype(np.float32)
    sess = session(data, threads)
    out_shape = sess.run(None, {"x": x})[0].shape
    upstream = rng.standard_normal(out_shape).astype(np.float32)
    params = plan.model.parameters
    exported = export_model(plan, Export(shapes={"x": x.shape}, gradients=True,
                                         wrt=("x",), dtype="float32", tensors=params))
    grad_sess = session(exported.SerializeToString(), threads)
    aligned = {"x": x, **{n: np.array(a) for n, a in params.items()}}
    forward_q = Query(wrt=(), dtype="float32")
    grad_q = Query(wrt="inputs", upstream=upstream, dtype="float32")
    return {
        "onnxruntime forward": lambda: sess.run(None, {"x": x}),
        "gradserve forward": lambda: execute(plan, {"x": x}, forward_q).output,
        "gradserve forward + input gradient": lambda: execute(plan, {"x": x}, grad_q).gradients,
        "gradserve forward, aligned parameters": lambda: execute(plan, aligned,
                                                                 forward_q).output,
        "gradserve fwd + input grad, aligned params": lambda: execute(plan, aligned,
                                                                      grad_q).gradients,
        "exported gradient model in onnxruntime": lambda: grad_sess.run(
            None, {"x": x, "upstream": upstream}),
    }


def bench(name: str, batch: int, rounds: int, budget: float, threads: int) -> None:
    fns = rows(name, batch, threads)
    base = "onnxruntime forward"
    calls = max(calls_for(fns[base], budget), 1)
    times = round_robin(fns, rounds, calls)
    goals = {"gradserve forward": "≤ 1.3×", "gradserve forward + input gradient": "≤ 2.5×",
             "gradserve forward, aligned parameters": "≤ 1.3×",
             "gradserve fwd + input grad, aligned params": "≤ 2.5×"}
    print(f"\n{name}, batch {batch}, float32, {threads} thread(s) ({rounds} rounds x {calls} "
          "calls)")
    print(f"{'row':42} {'median':>10} {'÷ ort fwd':>10} {'paired':>8}  goal")
    ref = statistics.median(times[base])
    for row, ts in times.items():
        paired = statistics.median(t / b for t, b in zip(ts, times[base]))
        med = statistics.median(ts)
        goal = goals.get(row, "")
        verdict = "" if not goal else (" met" if paired <= float(goal[2:-1]) else " not met")
        print(f"{row:42} {med * 1e3:8.3f}ms {med / ref:9.2f}x {paired:7.2f}x  {goal}{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of onnxruntime and of OpenBLAS (default 1)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, short ones")
    args = parser.parse_args()
    rounds, budget = (3, 0.05) if args.quick else (args.rounds, 0.15)
    for name in CASES:
        bench(name, args.batch, rounds, budget, args.threads)


if __name__ == "__main__":
    main()
