"""Dynamic batching inside a worker: concurrent requests to one registered graph, merged.

Requests to the same plan with the same shapes, dtype, ``wrt`` and upstream shape, and
nothing asked but gradients (their objectives are then separable: each request's own
scalar output or ``upstream``), arriving within ``GRADSERVE_BATCH_WINDOW_US`` of the first,
are stacked into one ``batched`` execution of up to ``GRADSERVE_BATCH_MAX_SIZE`` members
(engine/batched.py): the inputs whose values differ between the members become the batch
axis, the ones with identical bytes (stored parameters) are passed once; a shared input
differentiated gets its gradients ``per_example``. Each member gets exactly its own answer.

The first request of a group (the leader) keeps its compute slot and runs the merged
execution in it; a request that joins gives its slot back while it waits, so the merged
batch takes one slot and the others can be admitted and join. Validation and size checks
ran per request before (the flow's bind and estimate). A member whose deadline passes leaves
the batch (its 503 is its own); if the merged run fails, the members run one by one, so a
bad member never fails its neighbours. ``GRADSERVE_BATCH_MAX_SIZE=1`` turns it off.

The leader waits for others only where requests for its key have lately overlapped (one
arrived while another was running, within the last four windows): a lone request, or one
client's requests one after another, runs at once and pays no window.

While a merged run of its key computes, a new leader does not compete with it for the CPU:
it gives its slot back too and gathers the next batch until that run ends (or its group is
full), then takes a slot again (``acquire``: the admission step, its 503 when none frees up
in time) and runs. So the batch forms before the compute-slot limit: requests admitted
meanwhile join it, where with the slot held through a short window (the slots all taken
by the running batch and the waiting leader) nobody could.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from service.engine import Plan, Query, Result, execute
from service.errors import DeadlineExceeded
from service.runtime import metrics

__all__ = ["Batcher", "mergeable"]


def mergeable(query: Query) -> bool:
    """Nothing asked but gradients (and the output): separable per request."""
    return (query.tangents is None and query.hvp is None and query.loss is None
            and query.batched is None and query.directions is None and not query.fetch
            and not (query.jacobian or query.hessian or query.trace or query.trace_backward
                     or query.check or query.per_example))


class _Member:
    __slots__ = ("values", "query", "deadline", "done", "result", "error", "left", "joined")

    def __init__(self, values: Mapping[str, Any], query: Query, deadline: Any) -> None:
        self.values, self.query, self.deadline = values, query, deadline
        self.done = threading.Event()
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.left = False
        self.joined = time.perf_counter()


class _Group:
    __slots__ = ("members", "full", "closed")

    def __init__(self) -> None:
        self.members: list[_Member] = []
        self.full = threading.Event()
        self.closed = False


class Batcher:
    """One per worker process (the app's state holds it); thread-safe."""

    def __init__(self, max_size: int, window_us: int, limits: Any) -> None:
        self.max_size = max_size
        self.window = window_us / 1e6
        self.limits = limits
        self._lock = threading.Lock()
        self._open: dict[Any, _Group] = {}
        # Per key: requests inside run() now, and when one last arrived while another was
        # (concurrency seen: only then does a leader wait for company).
        self._running: dict[Any, int] = {}
        self._overlap: dict[Any, float] = {}
        self._computing: dict[Any, int] = {}  # per key: leaders running a batch now

    @property
    def enabled(self) -> bool:
        return self.max_size > 1

    def run(self, plan: Plan, values: Mapping[str, Any], query: Query, deadline: Any,
            release: Callable[[], None], run: Callable[..., Result] = execute,
            acquire: Callable[[], None] | None = None) -> Result:
        """The request's result, computed alone or in a merged batch (``run``: the
        engine's ``execute``, as the flow driver calls it; ``release``/``acquire`` give
        the request's compute slot back and take one again)."""
        key = _key(plan, values, query)
        now = time.perf_counter()
        member = group = None
        with self._lock:
            running = self._running.get(key, 0)
            if running:
                self._overlap[key] = now
            busy = now - self._overlap.get(key, -1e9) < 4 * self.window
            self._running[key] = running + 1
            if len(self._overlap) > 1024:
                self._overlap.clear()
            group = self._open.get(key)
            leader = group is None
            behind = leader and acquire is not None and self._computing.get(key, 0) > 0
            alone = leader and not (busy or behind)
            if alone:  # nothing to wait for: no member, no group, no events
                self._computing[key] = self._computing.get(key, 0) + 1
            else:
                member = _Member(values, query, deadline)
                if leader:
                    group = self._open[key] = _Group()
                group.members.append(member)
                if len(group.members) >= self.max_size:
                    self._close(key, group)
        try:
            if alone:
                metrics.BATCH_SIZE.observe(1)
                try:
                    return run(plan, values, query, limits=self.limits, deadline=deadline)
                finally:
                    with self._lock:
                        self._finished(key)
            if not leader:
                release()  # the merged batch runs in the leader's slot
                return _wait(member, deadline)
            return self._lead(key, plan, group, member, behind, run, release, acquire)
        finally:
            with self._lock:
                left = self._running[key] - 1
                if left:
                    self._running[key] = left
                else:
                    del self._running[key]

    def _lead(self, key: Any, plan: Plan, group: _Group, member: _Member, behind: bool,
              run: Callable[..., Result], release: Callable[[], None],
              acquire: Callable[[], None] | None) -> Result:
        """The leader's part: gather (without its slot while a run of the key computes,
        else in its slot for one window), then run the batch."""
        if behind and acquire is not None:
            release()
            _gather(group, member.deadline)
            with self._lock:
                self._close(key, group)
            _admit(group, acquire)
        else:
            group.full.wait(self.window)
        with self._lock:
            self._close(key, group)
            self._computing[key] = self._computing.get(key, 0) + 1
        try:
            self._run_group(plan, group.members, run)
        finally:
            with self._lock:
                self._finished(key)
        if member.error is not None:
            raise member.error
        assert member.result is not None
        return member.result

    def _finished(self, key: Any) -> None:
        """A leader's run ended: the next batch's leader, gathering, may start."""
        left = self._computing[key] - 1
        if left:
            self._computing[key] = left
        else:
            del self._computing[key]
        waiting = self._open.get(key)
        if waiting is not None:
            waiting.full.set()

    def _close(self, key: Any, group: _Group) -> None:
        group.closed = True
        group.full.set()
        if self._open.get(key) is group:
            del self._open[key]

    def _run_group(self, plan: Plan, members: list[_Member], run: Callable[..., Result]
                   ) -> None:
        start = time.perf_counter()
        live = []
        for m in members:
            metrics.BATCH_WAIT.observe(start - m.joined)
            if m.left or (m.deadline is not None and m.deadline.at <= time.monotonic()):
                m.error = DeadlineExceeded("the request deadline passed while it waited "
                                           "for its batch")
                m.done.set()
            else:
                live.append(m)
        metrics.BATCH_SIZE.observe(len(live))
        if len(live) > 1:
            try:
                for m, res in zip(live, self._merged(plan, live, run)):
                    m.result = res
                    m.done.set()
                return
            except Exception:  # noqa: BLE001, S110 - each member runs alone below  # nosec B110
                pass
        for m in live:  # alone, or the merged run failed: one by one
            try:
                m.result = run(plan, m.values, m.query, limits=self.limits,
                               deadline=m.deadline)
            except Exception as err:  # noqa: BLE001 - the member's own answer
                m.error = err
            m.done.set()

    def _merged(self, plan: Plan, live: list[_Member], run: Callable[..., Result]
                ) -> list[Result]:
        first = live[0]
        q = first.query
        names = plan.input_order
        stacked = [n for n in names if not all(_same(first.values[n], m.values[n])
                                               for m in live[1:])]
        if not stacked:  # identical requests: one run answers them all
            res = run(plan, first.values, q, limits=self.limits, deadline=first.deadline)
            return [res] + [_copy(res) for _ in live[1:]]
        values = {n: (np.stack([np.asarray(m.values[n]) for m in live]) if n in stacked
                      else first.values[n]) for n in names}
        upstream = None
        if q.upstream is not None:
            upstream = np.stack([np.asarray(m.query.upstream) for m in live])
        wrt = q.wrt if q.wrt is not None else plan.float_inputs
        shared = [n for n in wrt if n not in stacked]
        merged = Query(wrt=wrt, upstream=upstream, dtype=q.dtype, batched=stacked,
                       per_example=bool(shared))
        res = run(plan, values, merged, limits=self.limits, deadline=first.deadline)
        return [Result(output=res.output[i],
                       gradients={n: g[i] for n, g in res.gradients.items()})
                for i in range(len(live))]


def _gather(group: _Group, deadline: Any) -> None:
    """Wait (no slot held) until the group is full or the run ahead of it ends."""
    left = None if deadline is None else max(deadline.at - time.monotonic(), 0.0)
    group.full.wait(left)


def _admit(group: _Group, acquire: Callable[[], None]) -> None:
    """The leader takes a compute slot again; if it cannot, no member can run now: each
    gets the same answer (the admission's 503), the leader's raised."""
    try:
        acquire()
    except BaseException as err:
        for m in group.members[1:]:
            m.error = err
            m.done.set()
        raise


def _wait(member: _Member, deadline: Any) -> Result:
    left = None if deadline is None else max(deadline.at - time.monotonic(), 0.0)
    if not member.done.wait(left):
        member.left = True
        if deadline is not None:
            deadline.check()
    if member.error is not None:
        raise member.error
    assert member.result is not None
    return member.result


def _same(a: Any, b: Any) -> bool:
    """Identical bytes (not merely equal values: -0.0 and 0.0 differ), compared in place."""
    if a is b:
        return True
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    va = memoryview(np.ascontiguousarray(a).reshape(-1)).cast("B")
    vb = memoryview(np.ascontiguousarray(b).reshape(-1)).cast("B")
    return va == vb


def _copy(res: Result) -> Result:
    return Result(output=np.array(res.output, copy=True),
                  gradients={n: np.array(g, copy=True) for n, g in res.gradients.items()})


def _key(plan: Plan, values: Mapping[str, Any], query: Query) -> Any:
    # (dtype objects, not their names: str(dtype) costs ~20 us a value, per request)
    shapes = tuple((n, getattr(v, "shape", None), getattr(v, "dtype", type(v)))
                   for n, v in sorted(values.items()))
    up = None if query.upstream is None else np.shape(query.upstream)
    return (plan.graph_id, query.dtype, query.wrt, shapes, up)
