"""Split any `nn.Module` into ordered stages at named submodules.

The model is traced with torch.fx, treating every cut module as a leaf, and the graph is cut right
after each cut module's call. Each stage becomes a small `GraphModule` that shares the original
parameters (no copies), so the staged model computes exactly what the unsplit model computes.

A valid cut is one where the cut module's output is the *only* value that later code needs from
before it (true after the stem and after every residual block of a ResNet, or after any layer of a
plain chain). Cuts where a skip connection jumps over the boundary are rejected with a clear error.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from ..errors import GatiError


class _CutTracer(fx.Tracer):
    """Keeps the cut modules whole (leaves) so that each appears as one `call_module` node."""

    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


class StagedModel(nn.Module):
    """The base model as `len(cuts) + 1` stages; stage i ends at cut i, the last stage is the head."""

    def __init__(self, stages: list[nn.Module], cuts: list[str]):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.cuts = list(cuts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


def split_model(model: nn.Module, cuts: list[str]) -> StagedModel:
    """Split `model` after each module named in `cuts` (in forward order)."""
    names = dict(model.named_modules())
    unknown = [c for c in cuts if c not in names]
    if unknown:
        raise GatiError(f"cut points {unknown} are not submodules of {type(model).__name__}; "
                        f"some valid names: {list(names)[1:12]}")
    graph = _CutTracer(set(cuts)).trace(model)
    nodes = list(graph.nodes)
    boundaries = _boundaries(nodes, cuts)
    stages = []
    start = 0
    for end in boundaries + [len(nodes)]:
        stages.append(_stage(model, nodes, start, end))
        start = end
    return StagedModel(stages, cuts)


def _boundaries(nodes: list[fx.Node], cuts: list[str]) -> list[int]:
    """Index just after each cut's node; checks cuts are in forward order and called once."""
    position = {}
    for i, node in enumerate(nodes):
        if node.op == "call_module" and node.target in cuts:
            if node.target in position:
                raise GatiError(f"cut {node.target!r} is called more than once in forward; "
                                "a cut must be a module applied once")
            position[node.target] = i + 1
    order = [position[c] for c in cuts if c in position]
    missing = [c for c in cuts if c not in position]
    if missing:
        raise GatiError(f"cut points {missing} are never called in forward")
    if order != sorted(order):
        raise GatiError(f"cut points must be listed in forward order; got {cuts}")
    return order


def _stage(model: nn.Module, nodes: list[fx.Node], start: int, end: int) -> fx.GraphModule:
    """Copy nodes[start:end] into a graph whose single input is the previous cut's output."""
    inside = set(nodes[start:end])
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if start > 0:
        env[nodes[start - 1]] = graph.placeholder("x")
    for node in nodes[start:end]:
        if node.op == "output":
            graph.output(node.args[0] if not isinstance(node.args[0], fx.Node) else env[node.args[0]])
            continue
        for dep in node.all_input_nodes:
            if dep not in inside and dep not in env and dep.op != "get_attr":
                raise GatiError(f"cannot cut before {node.name!r}: it also reads {dep.name!r} from an "
                                "earlier stage (a skip connection crosses the cut)")
        env[node] = graph.node_copy(node, lambda n: _lookup(env, graph, n))
    if end < len(nodes):  # an inner stage returns the cut's output
        graph.output(env[nodes[end - 1]])
    return fx.GraphModule(model, graph)


def _lookup(env: dict[fx.Node, fx.Node], graph: fx.Graph, node: fx.Node) -> fx.Node:
    if node not in env and node.op == "get_attr":  # a constant defined before the cut
        env[node] = graph.get_attr(node.target)
    return env[node]
