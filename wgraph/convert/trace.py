"""Trace a model with ``torch.fx`` and interpret it on the example input to build its Layout.

Like ``torch.fx.passes.shape_prop.ShapeProp``, :class:`LayoutInterpreter` runs the traced graph on
real tensors; beside each value it keeps a *meta* saying which neurons lie on which axis, computed
by the per-op rules of :mod:`wgraph.convert.rules`.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from ..errors import ConversionError, UnsupportedOperation, WgraphError
from ..graph import Layout
from . import rules
from .builder import Feat, LayoutBuilder, Param, Raw, SplitFeat


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
                return Param(b.path(name), tuple(out.shape), out.dtype)
            if any(p.startswith(name + ".") for p in self.param_names):
                raise UnsupportedOperation(f"{self._where(n)}: reads the module {name!r} as a value")
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
        if isinstance(n.target, type) and issubclass(n.target, tuple):  # a namedtuple of outputs
            return tuple(metas) + tuple(kwmetas.values())

        # No rule: fine only if neither parameters nor hidden neurons are involved.
        params = [m.name for m in _flatten((metas, kwmetas)) if isinstance(m, Param)]
        if params:
            raise UnsupportedOperation(
                f"{op.where}: parameter {params[0]!r} is used by {_target_name(n.target)}, which has no "
                f"conversion rule.\n  Supported {rules.supported_ops()}"
            )
        has_params = module is not None and any(True for _ in module.parameters())
        touches_hidden = any(isinstance(m, (Feat, SplitFeat)) for m in _flatten((metas, kwmetas)))
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


def _on_meta(module: nn.Module):
    """Context in which ``module``'s parameters and buffers are "meta" tensors (shapes only, tied
    tensors stay tied); the real ones are back afterwards. Nothing is copied."""
    from torch.nn.utils.stateless import _reparametrize_module

    named = dict(module.named_parameters(remove_duplicate=False))
    named.update(module.named_buffers(remove_duplicate=False))
    return _reparametrize_module(module, {k: v.detach().to("meta") for k, v in named.items()}, tie_weights=True)


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


def export(model: nn.Module, inputs: tuple) -> fx.GraphModule:
    """``torch.export`` the model: an ATen-level graph whose parameters are ``get_attr`` nodes.

    This front end handles forwards that plain ``torch.fx`` cannot trace (data-dependent Python
    control flow, as in ``transformers`` models); the ATen ops get the same rules.
    """
    try:
        return torch.export.export(model, inputs, strict=False).module()
    except Exception as e:
        raise UnsupportedOperation(
            f"neither torch.fx nor torch.export can trace {type(model).__name__}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def build_layout(model: nn.Module, example_input, concrete_args: dict | None = None, tracer: str = "auto") -> Layout:
    """Trace ``model`` and interpret it on ``example_input`` (a tensor or tuple of tensors).

    ``tracer``: ``"fx"`` (``torch.fx.symbolic_trace``: module-level ops, source locations in
    errors), ``"export"`` (``torch.export``: ATen ops, traces data-dependent Python control flow)
    or ``"auto"`` (fx, and export where fx cannot trace).
    """
    if tracer not in ("auto", "fx", "export"):
        raise ConversionError(f"tracer must be 'auto', 'fx' or 'export', got {tracer!r}")
    if not isinstance(model, nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(model).__name__}")
    rules.register_optional_rules()
    state_keys = list(model.state_dict().keys())
    if not state_keys:
        raise ConversionError(f"{type(model).__name__} has no parameters: there is no weight graph to build")
    inputs = _as_tuple(example_input)
    # Tied tensors appear under several state-dict names: map every later name to the first.
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        key = id(t)
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    # A bare leaf module (e.g. one nn.Linear) is traced inside a wrapper so its rule applies.
    leaf = rules.find_module_rule(model) is not None
    root = nn.Sequential(model) if leaf else model

    def check_runs() -> None:
        """Raise ConversionError if the model itself fails on the example input."""
        try:
            model(*inputs)
        except Exception as e:
            shapes = ", ".join(str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__ for t in inputs)
            raise ConversionError(
                f"{type(model).__name__} does not run on the example input ({shapes}): {type(e).__name__}: {e}"
            ) from None

    used = {"tracer": tracer}

    def interpret(record: bool, inputs=inputs) -> LayoutBuilder:
        builder = LayoutBuilder(prefix="0." if leaf else "", aliases=aliases)
        try:
            if tracer == "export":
                gm = export(root, inputs)
            else:
                try:
                    gm = trace(root, concrete_args, record)
                    used["tracer"] = "fx"
                except UnsupportedOperation as fx_error:
                    if tracer == "fx":
                        raise
                    try:
                        gm = export(root, inputs)
                    except UnsupportedOperation as export_error:
                        raise UnsupportedOperation(f"{fx_error}\n  torch.export failed too: {export_error}") from None
                    used["tracer"] = "export"
        except UnsupportedOperation:
            check_runs()  # a bad example input is the better explanation
            raise
        if used["tracer"] == "fx":
            # Shapes are all the rules need: interpret a copy of the traced graph on the "meta"
            # device first (no arithmetic, so converting a ResNet-50 costs milliseconds, not a
            # forward pass), and only where an op cannot run on meta tensors, the real model.
            meta_inputs = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in inputs)
            try:
                with _on_meta(gm):
                    LayoutInterpreter(gm, builder, set(state_keys)).run(*meta_inputs)
                return builder
            except WgraphError:
                raise
            except Exception:
                builder = LayoutBuilder(prefix="0." if leaf else "", aliases=aliases)
        try:
            LayoutInterpreter(gm, builder, set(state_keys)).run(*inputs)
        except WgraphError:
            raise
        except Exception as e:
            check_runs()
            raise ConversionError(f"interpreting the traced {type(model).__name__} failed: {type(e).__name__}: {e}") from None
        return builder

    def interpret_in(train: bool) -> LayoutBuilder:
        model.train(train)
        # Training-mode BatchNorm needs two samples: repeat a batch of one along axis 0.
        xs = tuple(torch.cat([t, t]) if train and isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == 1 else t for t in inputs)
        try:
            try:
                return interpret(False, xs)
            except UnsupportedOperation:
                return interpret(True, xs)  # raises again, now with the source location
        except WgraphError as e:  # drop the fx interpreter's "While executing ..." appendix
            raise type(e)(str(e.args[0]).split("\n\nWhile executing")[0]) from None

    was_training = model.training
    mode = "eval"
    try:
        with torch.no_grad():
            builder = interpret_in(train=False)  # no statistics updates, deterministic dropout
            if any(k not in builder.slots and k not in builder.aliases for k in state_keys):
                # Parameters unused in eval mode (e.g. auxiliary heads): trace the training graph,
                # restoring the buffers that training-mode BatchNorm updates.
                saved = {k: v.clone() for k, v in model.named_buffers()}
                try:
                    train_builder = interpret_in(train=True)
                    if all(k in train_builder.slots or k in train_builder.aliases for k in state_keys):
                        builder, mode = train_builder, "train"
                except WgraphError:
                    pass
                finally:
                    for k, v in model.named_buffers():
                        v.copy_(saved[k])
    finally:
        model.train(was_training)
    missing = [k for k in state_keys if k not in builder.slots and k not in builder.aliases]
    if missing:
        raise UnsupportedOperation(
            f"{type(model).__name__}: state-dict entries {missing} are not used by forward on the example input "
            "(or belong to modules the converter has no rule for); the graph could not restore them"
        )
    if not builder.blocks:
        raise ConversionError(f"{type(model).__name__}: no weight connects any neurons")
    # Module versions (``state_dict()._metadata``) that some modules check when loading.
    metadata = {k: dict(v) for k, v in getattr(model.state_dict(), "_metadata", {}).items()}
    meta = {"model": type(model).__name__, "traced_in": mode, "tracer": used["tracer"], "state_dict_metadata": metadata}
    return builder.build(state_keys, meta=meta)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def layout_of(model: nn.Module, example_input, concrete_args: dict | None = None, tracer: str = "auto") -> Layout:
    """:func:`build_layout`, cached per model object, input signature and tracer."""
    sig = tuple(
        (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else repr(t) for t in _as_tuple(example_input)
    )
    key = (sig, repr(sorted((concrete_args or {}).items())), tracer)
    try:
        per_model = _CACHE.setdefault(model, {})
    except TypeError:
        per_model = {}
    if key not in per_model:
        per_model[key] = build_layout(model, example_input, concrete_args, tracer)
    return per_model[key]
