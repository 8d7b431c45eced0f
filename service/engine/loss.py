"""``Query.loss``: the objective is a loss of the graph's output against targets.

``execute`` with ``loss=("softmax_cross_entropy" | "hinge" | "mse", targets)`` runs the
plan's *loss plan*: the same graph with one more input (the targets) and one more node,
``loss = <loss op>(output, targets)``, as its output. The loss plan is compiled once per
plan and loss type and kept on the plan (its specializations count in the plan's bytes);
the original output is fetched from its node, so the answer holds the graph's output, the
loss value, and every derivative of the loss: gradients, HVPs, Hessians, traces and checks
alike (a Jacobian is refused: it is the output's, and the loss makes a scalar). Class labels
are label inputs of the loss plan, so they are checked (integers in ``[0, classes)``) and
never differentiated.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from service.engine import ir
from service.engine.errors import ProblemError, Unprocessable

if TYPE_CHECKING:
    from service.engine.compiler import Plan
    from service.engine.query import Query

LOSSES = ("softmax_cross_entropy", "hinge", "mse")
#: The loss plan's names for what it adds: '%' names never come from an expression's
#: variables, and a graph that uses them anyway is refused.
TARGETS = "%loss.targets"
LOSS_NODE = "%loss"


def loss_plan(plan: Plan, kind: str) -> Plan:
    """The plan of ``kind(plan's output, targets)``, compiled once per plan and kind."""
    derived = plan.loss_plans.get(kind)
    if derived is not None:
        return derived
    if kind not in LOSSES:
        raise Unprocessable(f"loss: type must be one of {', '.join(LOSSES)}, got "
                            f"{str(kind)[:40]!r}", loc=("loss", "type"))
    taken = set(plan.inputs) | {n.id for n in plan.nodes}
    if TARGETS in taken or LOSS_NODE in taken:
        raise Unprocessable(f"loss: the graph already has a node or input named "
                            f"'{TARGETS}' or '{LOSS_NODE}'", loc=("loss",))
    from service.engine.compiler import compile_graph  # the loss plan is a plan like any

    graph = ir.graph_from_dict(plan.canonical)
    inputs = tuple(sorted((*graph.inputs, (TARGETS, None))))
    node = ir.NodeIR(LOSS_NODE, kind, (graph.output, TARGETS))
    derived = compile_graph(ir.GraphIR(inputs, (*graph.nodes, node), LOSS_NODE),
                            plan.registry)
    derived.max_specializations = plan.max_specializations
    derived.on_resize = forward_resize(plan)
    with plan._lock:
        kept = plan.loss_plans.setdefault(kind, derived)
    if kept is derived and plan.on_resize is not None:
        # Counted in its plan's nbytes from now on: the plan cache hears of it as growth.
        plan.on_resize(plan, derived.nbytes, 0)
    return kept


def forward_resize(plan: Plan) -> Any:
    """The loss plan's growth counts as its plan's (the plan cache sees one entry)."""
    def on_resize(_derived: Plan, delta: int, evicted: int) -> None:
        hook = plan.on_resize
        if hook is not None:
            hook(plan, delta, evicted)

    return on_resize


def loss_query(plan: Plan, query: Query) -> Query:
    """The query the loss plan runs: the same, with the original output fetched and the
    default ``wrt`` the original graph's float inputs (never the targets)."""
    wrt = plan.float_inputs if query.wrt is None else query.wrt
    return replace(query, loss=None, wrt=wrt, fetch=(*query.fetch, plan.output))


def reword(err: ProblemError, output: str) -> ProblemError:
    """The loss plan's errors about the two parts it added (its targets input, its loss
    node), said of the request's ``loss.targets``; and no error lists the targets among the
    graph's inputs. They name those parts by the reserved names above, which no request can
    use: replacing them cannot touch anything else."""
    detail = err.detail
    for old, new in ((f"{TARGETS}, ", ""), (f"inputs: {TARGETS})", "inputs: none)")):
        detail = detail.replace(old, new)
    loc = err.loc or ()
    ours = (len(loc) >= 2 and loc[1] == TARGETS) or getattr(err, "node", None) == LOSS_NODE
    if not ours or err.status != 422:
        if detail != err.detail:
            err.detail = detail
            err.args = (detail,)
        return err
    for old, new in ((f"values: labels '{TARGETS}'", "loss.targets:"),
                     (f"values: '{TARGETS}'", "loss.targets:"),
                     (f"node '{LOSS_NODE}': ", "loss: "),
                     (f"({output}(", "(output("), (f"{TARGETS}(", "targets(")):
        detail = detail.replace(old, new)
    return Unprocessable(detail, loc=("loss", "targets"))


def split_result(result: Any, plan: Any, query: Any) -> Any:
    """A loss plan's result in the request's words: the loss plan's output is the loss, the
    model's own output was fetched beside it (and stays fetched only if asked)."""
    assert result.fetched is not None
    result.loss = result.output
    result.output = result.fetched.pop(plan.output)
    if not query.fetch:
        result.fetched = None
    return result
