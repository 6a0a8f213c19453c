"""Interpret a traced model on the example input to build its Layout.

Like ``torch.fx.passes.shape_prop.ShapeProp``, :class:`LayoutInterpreter` runs the traced graph on
real (or "meta") tensors; beside each value it keeps a *meta* saying which neurons lie on which
axis, computed by the per-op rules of :mod:`wgraph.convert.rules`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from ..errors import UnsupportedOperation
from .builder import Feat, Gram, LayoutBuilder, Moved, Param, Raw, Scores, SplitFeat, Stat
from .rules import REGISTRY, Op
from .rules.attention import on_scores, scores_output
from .rules.parametric import matmul
from .rules.pointwise import pointwise
from .rules.shape import reshape, transpose


def _target_name(target) -> str:
    if isinstance(target, str):
        return target
    mod = getattr(target, "__module__", None) or ""
    return f"{mod}.{getattr(target, '__name__', repr(target))}".lstrip(".")


def _location(node: fx.Node) -> str:
    """The user's source line that created ``node`` (from the recorded stack trace)."""
    st = node.stack_trace or ""
    torch_dir = str(Path(torch.__file__).parent)
    lines = [
        l.strip() for l in st.strip().splitlines() if l.strip().startswith("File ") and torch_dir not in l
    ]
    return f" at {lines[-1]}" if lines else ""


def _module_path(node: fx.Node) -> str:
    """The innermost module whose forward created ``node`` (fx records ``nn_module_stack``)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    key, val = list(stack.items())[-1]
    path = val[0] if isinstance(val, tuple) else key
    return f" in module {path!r}" if path else ""


class LayoutInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, builder: LayoutBuilder, param_names: set[str]):
        super().__init__(gm)
        self.builder = builder
        self.param_names = param_names
        self.parameters = {name for name, _ in gm.named_parameters(remove_duplicate=False)}
        self.metas: dict[fx.Node, Any] = {}

    def _where(self, n: fx.Node) -> str:
        if n.op == "call_module":
            mod = self.module.get_submodule(n.target)
            return f"module {n.target!r} ({type(mod).__name__})"
        return f"fx node {n.name!r} ({n.op} {_target_name(n.target)}){_module_path(n)}{_location(n)}"

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.metas[n] = self._meta(n, out)
        return out

    def _meta(self, n: fx.Node, out: Any):
        b = self.builder
        if n.op == "placeholder":
            return Raw(n.name) if isinstance(out, torch.Tensor) else None
        if n.op == "get_attr":
            name = str(n.target)
            if name in self.param_names:
                return Param(b.path(name), tuple(out.shape), out.dtype, buffer=name not in self.parameters)
            if any(p.startswith(name + ".") for p in self.param_names):
                raise UnsupportedOperation(f"{self._where(n)}: reads the module {name!r} as a value")
            return None
        if n.op == "output":
            for m in _flatten(fx.node.map_arg(n.args[0], lambda a: self.metas[a])):
                if isinstance(m, Feat):
                    b.mark_output(m.layer)
                elif isinstance(m, (Scores, Gram)):
                    scores_output(b, m, "the output")
            return None

        args, kwargs = self.fetch_args_kwargs_from_env(n)
        metas = fx.node.map_arg(n.args, lambda a: self.metas[a])
        kwmetas = fx.node.map_arg(n.kwargs, lambda a: self.metas[a])
        module = self.module.get_submodule(n.target) if n.op == "call_module" else None
        declared = REGISTRY.find(n.op, n.target if module is None else module)
        op = Op(n, self._where(n), module, tuple(args), dict(kwargs), tuple(metas), dict(kwmetas), out, declared)
        if (declared is None or declared.rule is not matmul) and any(
            isinstance(m, (Scores, Gram)) for m in _flatten((metas, kwmetas))
        ):
            return on_scores(b, op)  # attention scores, until they multiply the values
        moved = [m for m in _flatten((metas, kwmetas)) if isinstance(m, Moved)]
        if moved and not (declared is not None and declared.rule in (reshape, transpose)):
            if declared is not None and declared.rule is pointwise and len(op.tensors()) == 1:
                if tuple(out.shape) == tuple(op.tensors()[0][0].shape):  # contiguous(), a cast
                    b.restrict_scaling(moved[0].layer, "none")
                    return moved[0]
            raise UnsupportedOperation(
                f"{op.where}: an op on a tensor whose neurons are folded into other axes; only reshapes and "
                "axis reorderings may follow until one axis holds them again"
            )
        if declared is not None:
            return declared.rule(b, op)
        if isinstance(n.target, type) and issubclass(n.target, tuple):  # a namedtuple of outputs
            return tuple(metas) + tuple(kwmetas.values())

        # No rule: fine only if neither parameters nor hidden neurons are involved.
        params = [m.name for m in _flatten((metas, kwmetas)) if isinstance(m, Param)]
        if params:
            raise UnsupportedOperation(
                f"{op.where}: parameter {params[0]!r} is used by {_target_name(n.target)}, which has no "
                f"conversion rule.\n  Supported {REGISTRY.supported_ops()}"
            )
        has_params = module is not None and any(True for _ in module.parameters())
        touches_hidden = any(isinstance(m, (Feat, SplitFeat, Stat, Moved)) for m in _flatten((metas, kwmetas)))
        if not has_params and not touches_hidden:
            return op.raw() if isinstance(out, torch.Tensor) else None
        what = _target_name(n.target) if module is None else type(module).__name__
        raise UnsupportedOperation(
            f"{op.where}: no conversion rule for {what}.\n  Supported {REGISTRY.supported_ops()}"
        )


def _flatten(x):
    if isinstance(x, (tuple, list)):
        for y in x:
            yield from _flatten(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flatten(y)
    else:
        yield x


def on_meta(module: nn.Module):
    """Context in which ``module``'s parameters and buffers are "meta" tensors (shapes only, tied
    tensors stay tied); the real ones are back afterwards. Nothing is copied."""
    from torch.nn.utils.stateless import _reparametrize_module

    named = dict(module.named_parameters(remove_duplicate=False))
    named.update(module.named_buffers(remove_duplicate=False))
    return _reparametrize_module(module, {k: v.detach().to("meta") for k, v in named.items()}, tie_weights=True)


