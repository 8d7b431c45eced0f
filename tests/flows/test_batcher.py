"""Dynamic batching (service/flows/batcher.py) in process: concurrent requests merged into
one batched run equal to each run alone; a failed merged run reruns its members one by one;
a member past its deadline leaves; max size 1 is off; only separable queries merge."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from service.engine import REGISTRY, Query, compile_graph, execute, parse_expression
from service.engine.limits import DEFAULT_LIMITS, Deadline
from service.errors import DeadlineExceeded
from service.flows.batcher import Batcher, mergeable

PLAN = compile_graph(parse_expression("sum(tanh(W @ x + b))", REGISTRY).graph, REGISTRY)
RNG = np.random.default_rng(8)
W, B = RNG.standard_normal((6, 5)), RNG.standard_normal(6)


class Recorder:
    """The engine's execute, counting merged (batched) runs; ``fail_merged`` makes them
    raise as a bad member would."""

    def __init__(self, fail_merged: bool = False) -> None:
        self.merged: list[int] = []
        self.fail_merged = fail_merged
        self.lock = threading.Lock()

    def __call__(self, plan: Any, values: Any, query: Query, **kw: Any) -> Any:
        if query.batched is not None:
            with self.lock:
                self.merged.append(len(values[query.batched[0]]))
            if self.fail_merged:
                raise ValueError("a member broke the merged run")
        return execute(plan, values, query, **kw)


def _prime(batcher: Batcher, wrt: Any = None) -> threading.Thread:
    """A slow request in flight for the key while the others arrive: concurrency seen, so
    the next leader waits for company (a lone or sequential request would not)."""
    inside = threading.Event()

    def slow(*args: Any, **kw: Any) -> Any:
        inside.set()
        threading.Event().wait(0.3)
        return execute(*args, **kw)

    t = threading.Thread(target=batcher.run, args=(PLAN, {"W": W, "b": B, "x": W[0, :5]},
                                                   Query(wrt=wrt), None, lambda: None, slow))
    t.start()
    inside.wait(10)
    return t


def _concurrent(batcher: Batcher, run: Recorder, xs: np.ndarray, wrt: Any = None,
                deadlines: list[Any] | None = None) -> list[Any]:
    n = len(xs)
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        try:
            out[i] = batcher.run(PLAN, {"W": W, "b": B, "x": xs[i]}, Query(wrt=wrt),
                                 None if deadlines is None else deadlines[i], lambda: None,
                                 run)
        except Exception as err:  # noqa: BLE001 - the test reads it
            out[i] = err

    primer = _prime(batcher, wrt)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    primer.join(30)
    return out


@pytest.mark.parametrize("wrt", [None, ("x",)])
def test_concurrent_requests_merge_and_each_gets_its_own_answer(wrt: Any) -> None:
    batcher, run = Batcher(8, 200_000, DEFAULT_LIMITS), Recorder()
    xs = RNG.standard_normal((6, 5))
    got = _concurrent(batcher, run, xs, wrt)
    assert run.merged and max(run.merged) > 1, "nothing merged"
    for i, res in enumerate(got):
        alone = execute(PLAN, {"W": W, "b": B, "x": xs[i]}, Query(wrt=wrt))
        np.testing.assert_allclose(res.output, alone.output, rtol=1e-12)
        assert set(res.gradients) == set(alone.gradients)
        for n, g in alone.gradients.items():
            np.testing.assert_allclose(res.gradients[n], g, rtol=1e-10, atol=1e-14)


def test_a_failed_merged_run_reruns_each_member_alone() -> None:
    batcher, run = Batcher(8, 200_000, DEFAULT_LIMITS), Recorder(fail_merged=True)
    xs = RNG.standard_normal((5, 5))
    got = _concurrent(batcher, run, xs)
    assert run.merged
    for i, res in enumerate(got):
        alone = execute(PLAN, {"W": W, "b": B, "x": xs[i]}, Query())
        np.testing.assert_allclose(res.gradients["W"], alone.gradients["W"], rtol=1e-12)


def test_a_member_past_its_deadline_leaves_the_batch() -> None:
    batcher, run = Batcher(8, 200_000, DEFAULT_LIMITS), Recorder()
    xs = RNG.standard_normal((4, 5))
    gone = Deadline.after(0.0)
    got = _concurrent(batcher, run, xs, deadlines=[None, gone, None, None])
    assert isinstance(got[1], DeadlineExceeded)
    for i in (0, 2, 3):
        alone = execute(PLAN, {"W": W, "b": B, "x": xs[i]}, Query())
        np.testing.assert_allclose(got[i].output, alone.output, rtol=1e-12)


def test_max_size_one_is_off_and_only_separable_queries_merge() -> None:
    assert not Batcher(1, 2000, DEFAULT_LIMITS).enabled
    assert Batcher(2, 2000, DEFAULT_LIMITS).enabled
    assert mergeable(Query()) and mergeable(Query(wrt=["x"], upstream=np.ones(2)))
    for q in (Query(jacobian=True), Query(tangents={"x": 1.0}), Query(loss=("mse", 1.0)),
              Query(batched=["x"]), Query(trace=True), Query(fetch=["h"])):
        assert not mergeable(q)


def test_joiners_give_their_slot_back_and_differing_inputs_are_stacked() -> None:
    batcher, run = Batcher(8, 200_000, DEFAULT_LIMITS), Recorder()
    released: list[int] = []
    n = 5
    xs, ws = RNG.standard_normal((n, 5)), RNG.standard_normal((n, 6, 5))  # W differs too
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        out[i] = batcher.run(PLAN, {"W": ws[i], "b": B, "x": xs[i]}, Query(), None,
                             lambda: released.append(i), run)

    primer = _prime(batcher)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    primer.join(30)
    merged = sum(run.merged)
    assert merged > 1 and len(released) >= merged - len(run.merged)  # every joiner's slot
    for i in range(n):
        alone = execute(PLAN, {"W": ws[i], "b": B, "x": xs[i]}, Query())
        np.testing.assert_allclose(out[i].gradients["W"], alone.gradients["W"], rtol=1e-10)
        np.testing.assert_allclose(out[i].gradients["b"], alone.gradients["b"], rtol=1e-10)


def test_identical_means_identical_bytes() -> None:
    from service.flows.batcher import _same

    assert _same(np.zeros(3), np.zeros(3)) and _same(np.float64(2.0), np.asarray(2.0))
    assert not _same(np.zeros(3), -np.zeros(3))  # equal values, other bytes
    assert not _same(np.zeros(3), np.zeros(3, dtype=np.float32))
    assert not _same(np.zeros((3, 1)), np.zeros(3))


def test_one_clients_requests_in_turn_never_wait_for_company() -> None:
    batcher, run = Batcher(8, 500_000, DEFAULT_LIMITS), Recorder()  # a 0.5 s window
    start = time.perf_counter()
    for i in range(5):
        batcher.run(PLAN, {"W": W, "b": B, "x": W[i, :5]}, Query(), None, lambda: None, run)
    assert time.perf_counter() - start < 0.5 and not run.merged


class Slots:
    """A worker's compute slots as the admission step keeps them: ``acquire`` fails (as
    its 503 would) when ``fail`` is set."""

    def __init__(self, n: int, fail: bool = False) -> None:
        self.sem = threading.BoundedSemaphore(n)
        self.fail = fail
        self.acquired = 0

    def acquire(self) -> None:
        if self.fail:
            raise RuntimeError("no compute slot freed up in time")
        assert self.sem.acquire(timeout=10)
        self.acquired += 1


def _behind_a_running_batch(batcher: Batcher, run: Any, slots: Slots, xs: np.ndarray
                            ) -> list[Any]:
    """One slow request computes (holding a slot); the others arrive while it does, each
    admitted first (a slot taken), as the HTTP layer does, and give it back as told."""
    inside, go_on = threading.Event(), threading.Event()

    def slow(*args: Any, **kw: Any) -> Any:
        inside.set()
        go_on.wait(10)
        return execute(*args, **kw)

    def request(x: Any, fn: Any, out: list[Any], i: int) -> None:
        assert slots.sem.acquire(timeout=10)  # admitted
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                slots.sem.release()

        def acquire() -> None:
            slots.acquire()
            held[0] = True
        try:
            out[i] = batcher.run(PLAN, {"W": W, "b": B, "x": x}, Query(), None, release, fn,
                                 acquire)
        except Exception as err:  # noqa: BLE001 - the test reads it
            out[i] = err
        finally:
            release()

    first: list[Any] = [None]
    t0 = threading.Thread(target=request, args=(W[0, :5], slow, first, 0))
    t0.start()
    assert inside.wait(10)
    out: list[Any] = [None] * len(xs)
    threads = [threading.Thread(target=request, args=(xs[i], run, out, i))
               for i in range(len(xs))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while sum(len(g.members) for g in batcher._open.values()) < len(xs) \
            and time.monotonic() < deadline:
        time.sleep(0.005)  # every one of them admitted and waiting in the next batch
    go_on.set()
    for t in (t0, *threads):
        t.join(30)
    assert first[0] is not None
    return out


def test_the_next_batch_gathers_without_slots_while_one_computes() -> None:
    """With 2 slots, one held by the running request: 6 more requests each get the other
    slot in turn, join the next batch and give it back; its leader takes a slot again
    once the run ahead ends, and the 6 run as one merged batch, each its own answer."""
    batcher, run, slots = Batcher(8, 2000, DEFAULT_LIMITS), Recorder(), Slots(2)
    xs = RNG.standard_normal((6, 5))
    out = _behind_a_running_batch(batcher, run, slots, xs)
    assert run.merged == [6] and slots.acquired == 1
    for i, x in enumerate(xs):
        alone = execute(PLAN, {"W": W, "b": B, "x": x}, Query())
        np.testing.assert_allclose(out[i].output, alone.output, rtol=1e-12)
        for n in ("W", "b", "x"):
            np.testing.assert_allclose(out[i].gradients[n], alone.gradients[n], rtol=1e-10,
                                       atol=1e-14)
    assert slots.sem.acquire(blocking=False) and slots.sem.acquire(blocking=False)  # all back


def test_a_gathering_leader_without_a_slot_fails_its_batch_alike() -> None:
    batcher, run, slots = Batcher(8, 2000, DEFAULT_LIMITS), Recorder(), Slots(2, fail=True)
    out = _behind_a_running_batch(batcher, run, slots, RNG.standard_normal((3, 5)))
    assert not run.merged
    assert all(isinstance(o, RuntimeError) and "slot" in str(o) for o in out)
