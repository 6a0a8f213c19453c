"""Trace a model with ``torch.fx`` and interpret it on the example input to build its Layout.

Like ``torch.fx.passes.shape_prop.ShapeProp``, :class:`LayoutInterpreter` runs the traced graph on
real tensors; beside each value it keeps a *meta* saying which neurons lie on which axis, computed
by the per-op rules of :mod:`wgraph.convert.rules`.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import fx, nn

from ..errors import ConversionError, UnsupportedOperation
from ..graph import Layout
from . import rules
from .builder import Feat, LayoutBuilder, Raw


def _target_name(target) -> str:
    if isinstance(target, str):
        return target
    mod = getattr(target, "__module__", None) or ""
    return f"{mod}.{getattr(target, '__name__', repr(target))}".lstrip(".")


def _location(node: fx.Node) -> str:
    """The user's source line that created ``node`` (from the recorded stack trace)."""
    st = node.stack_trace or ""
    lines = [l.strip() for l in st.strip().splitlines() if l.strip().startswith("File ")]
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
            if any(p == name or p.startswith(name + ".") for p in self.param_names):
                raise UnsupportedOperation(
                    f"{self._where(n)}: parameter/buffer {name!r} is used functionally (outside its module's "
                    "own forward); this is not supported yet: wrap it in a module such as nn.Linear"
                )
            return None
        if n.op == "output":
            for m in _flatten(fx.node.map_arg(n.args[0], lambda a: self.metas[a])):
                if isinstance(m, Feat):
                    b.mark_output(m.layer)
            return None

        args, kwargs = self.fetch_args_kwargs_from_env(n)
        metas = fx.node.map_arg(n.args, lambda a: self.metas[a])
        kwmetas = fx.node.map_arg(n.kwargs, lambda a: self.metas[a])
        module = self.module.get_submodule(n.target) if n.op == "call_module" else None
        op = rules.Op(n, self._where(n), module, tuple(args), dict(kwargs), tuple(metas), dict(kwmetas), out)

        if module is not None:
            rule = rules.find_module_rule(module)
        elif n.op == "call_function":
            rule = rules.FUNCTION_RULES.get(n.target)
        else:
            rule = rules.METHOD_RULES.get(n.target)
        if rule is not None:
            return rule(b, op)

        # No rule: fine only if neither parameters nor hidden neurons are involved.
        has_params = module is not None and any(True for _ in module.parameters())
        touches_hidden = any(isinstance(m, Feat) for m in _flatten((metas, kwmetas)))
        if not has_params and not touches_hidden:
            return rules._raw_or_none(op) if isinstance(out, torch.Tensor) else None
        raise UnsupportedOperation(
            f"{op.where}: no conversion rule for {_target_name(n.target) if module is None else type(module).__name__}.\n"
            f"  Supported {rules.supported_ops()}"
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


def _as_tuple(example_input) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def trace(model: nn.Module, concrete_args: dict | None = None, record_stack_traces: bool = False) -> fx.GraphModule:
    """``torch.fx`` trace, errors turned into :class:`UnsupportedOperation`.

    ``record_stack_traces`` keeps each node's source line for error messages (its first use costs
    about two seconds of imports, so :func:`build_layout` only asks for it to explain an error).
    """
    tracer = fx.Tracer()
    tracer.record_stack_traces = record_stack_traces
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as e:  # fx raises TraceError, TypeError, ... from inside the user's forward
        tb = e.__traceback__
        loc = ""
        while tb is not None:
            code = tb.tb_frame.f_code
            if "torch/fx" not in code.co_filename and "torch/nn/modules/module.py" not in code.co_filename:
                loc = f" (at {code.co_filename}:{tb.tb_lineno}, in {code.co_name})"
            tb = tb.tb_next
        raise UnsupportedOperation(
            f"torch.fx cannot trace {type(model).__name__}{loc}: {type(e).__name__}: {e}\n"
            "  Hint: data-dependent control flow cannot be traced; pass concrete_args={name: value} "
            "for arguments that select a branch, or move the branch out of forward."
        ) from None
    return fx.GraphModule(model, graph)


def build_layout(model: nn.Module, example_input, concrete_args: dict | None = None) -> Layout:
    """Trace ``model`` and interpret it on ``example_input`` (a tensor or tuple of tensors)."""
    if not isinstance(model, nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(model).__name__}")
    state_keys = list(model.state_dict().keys())
    if not state_keys:
        raise ConversionError(f"{type(model).__name__} has no parameters: there is no weight graph to build")
    inputs = _as_tuple(example_input)
    was_training = model.training
    model.eval()  # no running-statistics updates, deterministic dropout
    try:
        with torch.no_grad():
            try:
                model(*inputs)
            except Exception as e:
                raise ConversionError(
                    f"{type(model).__name__} does not run on the example input "
                    f"({', '.join(str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__ for t in inputs)}): "
                    f"{type(e).__name__}: {e}"
                ) from None
            # A bare leaf module (e.g. one nn.Linear) is traced inside a wrapper so its rule applies.
            leaf = rules.find_module_rule(model) is not None
            root = nn.Sequential(model) if leaf else model

            def interpret(record: bool) -> LayoutBuilder:
                builder = LayoutBuilder(prefix="0." if leaf else "")
                LayoutInterpreter(trace(root, concrete_args, record), builder, set(state_keys)).run(*inputs)
                return builder

            try:
                builder = interpret(record=False)
            except UnsupportedOperation:
                builder = interpret(record=True)  # raises again, now with the source location
    finally:
        model.train(was_training)
    missing = [k for k in state_keys if k not in builder.slots]
    if missing:
        raise UnsupportedOperation(
            f"{type(model).__name__}: state-dict entries {missing} are not used by forward on the example input "
            "(or belong to modules the converter has no rule for); the graph could not restore them"
        )
    if not builder.blocks:
        raise ConversionError(f"{type(model).__name__}: no weight connects any neurons")
    return builder.build(state_keys, meta={"model": type(model).__name__})


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def layout_of(model: nn.Module, example_input, concrete_args: dict | None = None) -> Layout:
    """:func:`build_layout`, cached per model object and input signature."""
    sig = tuple(
        (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else repr(t) for t in _as_tuple(example_input)
    )
    key = (sig, repr(sorted((concrete_args or {}).items())))
    try:
        per_model = _CACHE.setdefault(model, {})
    except TypeError:
        per_model = {}
    if key not in per_model:
        per_model[key] = build_layout(model, example_input, concrete_args)
    return per_model[key]
