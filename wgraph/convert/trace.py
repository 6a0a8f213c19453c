"""Trace a model and build its Layout: the front ends, and the ordered attempts that use them.

:func:`build_layout` tries the attempts of :data:`ATTEMPTS` in order. The first one runs; each
later one runs only after the failure its ``after`` names, and the first success gives the layout.
A model is traced in eval mode first, and in training mode where eval mode leaves parameters
unused (auxiliary heads). When no attempt succeeds, the error is the last attempt's, except that
front ends which could not trace at all are all named, and a model that does not run on its example
input says so instead.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import fx, nn

from ..errors import ConversionError, UnsupportedOperation, WgraphError
from ..layout import Layout
from .builder import LayoutBuilder
from .interpret import LayoutInterpreter, on_meta
from .rules import REGISTRY


def trace(model: nn.Module, concrete_args: dict | None = None, record_stack_traces: bool = False) -> fx.GraphModule:
    """``torch.fx`` trace, errors turned into :class:`UnsupportedOperation`.

    ``record_stack_traces`` keeps each node's source line for error messages (its first use costs
    about two seconds of imports, so :func:`build_layout` only asks for it to explain an error).
    """
    tracer = _Tracer()
    tracer.record_stack_traces = record_stack_traces
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
        _forget_proxies(model)
    except Exception as e:
        _forget_proxies(model)  # fx raises TraceError, TypeError, ... from inside the user's forward
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


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer, which also keeps as calls the modules of other packages that have a
    conversion rule of their own (timm's weight-standardized convolutions)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return super().is_leaf_module(m, module_qualified_name) or REGISTRY.find("call_module", m) is not None


def _forget_proxies(model: nn.Module) -> None:
    """Empty the dictionaries in which modules cache values computed in forward (timm's LeViT,
    EfficientFormer: ``attention_bias_cache``): after a trace they hold fx proxies of that trace,
    which a later trace would read as values of its own graph."""
    for m in model.modules():
        for value in vars(m).values():
            if isinstance(value, dict) and any(isinstance(v, fx.Proxy) for v in value.values()):
                value.clear()


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


@dataclass(frozen=True)
class Attempt:
    """One way of building a layout: a front end (``"fx"`` or ``"export"``, with or without source
    lines recorded for error messages) whose graph is interpreted on "meta" tensors (shapes only,
    no arithmetic: converting a ResNet-50 costs milliseconds, not a forward pass) or on the example
    input. ``after``: the ``(attempt, step)`` failures this attempt answers, ``(None, None)`` when
    it may run first (see :data:`STEPS`)."""

    name: str
    front_end: str
    on_meta: bool
    after: tuple[tuple[str | None, str | None], ...]
    source_lines: bool = False

    def answers(self, said: list[Said]) -> bool:
        last = (said[-1].attempt.name, said[-1].step) if said else (None, None)
        return last in self.after


#: How an attempt can fail: ``"trace"`` (its front end produced no graph), ``"refused"`` (a rule
#: raised UnsupportedOperation), ``"failed"`` (an op could not run, e.g. on meta tensors),
#: ``"error"`` (any other WgraphError).
STEPS = ("trace", "refused", "failed", "error")

#: The ways of building a layout, in the order they are tried (``tracer`` picks the front ends).
ATTEMPTS = (
    Attempt("torch.fx", "fx", on_meta=True, after=((None, None),)),
    Attempt("torch.fx on the example input", "fx", on_meta=False, after=(("torch.fx", "failed"),)),
    # A rule refused an op: trace again recording each node's source line (its first use costs about
    # two seconds of imports), so that the error names the line.
    Attempt("torch.fx with source lines", "fx", on_meta=True, after=(("torch.fx", "refused"),), source_lines=True),
    Attempt(
        "torch.fx with source lines on the example input",
        "fx",
        on_meta=False,
        after=(("torch.fx on the example input", "refused"), ("torch.fx with source lines", "failed")),
        source_lines=True,
    ),
    # Forwards that torch.fx cannot trace (data-dependent Python control flow, transformers models).
    Attempt("torch.export", "export", on_meta=False, after=((None, None), ("torch.fx", "trace"))),
)
FRONT_ENDS = {"auto": ("fx", "export"), "fx": ("fx",), "export": ("export",)}


@dataclass(frozen=True)
class Said:
    """What one attempt said: the step that failed (:data:`STEPS`) and its error."""

    attempt: Attempt
    step: str
    error: Exception


@dataclass
class Built:
    """A layout builder, the front end that built it and the mode the model was traced in."""

    builder: LayoutBuilder
    front_end: str
    mode: str


@dataclass
class _Conversion:
    """One model on one example input in one mode: what every attempt needs.

    ``inputs`` is the example input as given, ``args`` what the traced graph runs on (in training
    mode a batch of one is doubled). ``graphs`` keeps the graph of each front end already traced.
    """

    model: nn.Module
    root: nn.Module
    inputs: tuple
    args: tuple
    concrete_args: dict | None
    state_keys: list[str]
    aliases: dict[str, str]
    prefix: str
    graphs: dict[tuple[str, bool], fx.GraphModule] = field(default_factory=dict)

    def graph(self, attempt: Attempt) -> fx.GraphModule:
        key = (attempt.front_end, attempt.source_lines)
        if key not in self.graphs:
            if attempt.front_end == "fx":
                self.graphs[key] = trace(self.root, self.concrete_args, attempt.source_lines)
            else:
                self.graphs[key] = export(self.root, self.args)
        return self.graphs[key]

    def interpret(self, gm: fx.GraphModule, on_meta_tensors: bool) -> LayoutBuilder:
        builder = LayoutBuilder(prefix=self.prefix, aliases=self.aliases)
        if on_meta_tensors:
            args = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in self.args)
            with on_meta(gm):
                LayoutInterpreter(gm, builder, set(self.state_keys)).run(*args)
        else:
            LayoutInterpreter(gm, builder, set(self.state_keys)).run(*self.args)
        self.keep_counters(builder)
        return builder

    def keep_counters(self, builder: LayoutBuilder) -> None:
        """A BatchNorm's ``num_batches_tracked`` belongs to no neuron and an eval-mode graph never
        reads it where the normalization is a function call (``F.batch_norm``, ``torch.export``):
        kept as an extra beside the running statistics that the graph did place."""
        for key in self.state_keys:
            path, _, attr = key.rpartition(".")
            stats = builder.qualify(builder.path(path), "running_mean")
            if attr == "num_batches_tracked" and key not in builder.slots and stats in builder.slots:
                counter = getattr(self.model.get_submodule(path), attr)
                builder.extra(key, tuple(counter.shape), counter.dtype, f"the BatchNorm {path!r}")

    def bad_input(self) -> ConversionError | None:
        """The error of a model that fails on its example input (the better explanation), if it does."""
        try:
            self.model(*self.inputs)
        except Exception as e:
            shapes = ", ".join(
                str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__ for t in self.inputs
            )
            return ConversionError(
                f"{type(self.model).__name__} does not run on the example input ({shapes}): {type(e).__name__}: {e}"
            )
        return None

    def unused(self, builder: LayoutBuilder) -> list[str]:
        """State-dict entries that ``builder`` found no place for."""
        return [k for k in self.state_keys if k not in builder.slots and k not in builder.aliases]


def _first_success(conv: _Conversion, attempts: tuple[Attempt, ...], mode: str) -> Built:
    """The first attempt that builds a layout, or the error that explains why none did."""
    said: list[Said] = []
    for attempt in attempts:
        if not attempt.answers(said):
            continue
        try:
            gm = conv.graph(attempt)
        except UnsupportedOperation as e:
            said.append(Said(attempt, "trace", e))
            continue
        try:
            return Built(conv.interpret(gm, attempt.on_meta), attempt.front_end, mode)
        except UnsupportedOperation as e:
            said.append(Said(attempt, "refused", e))
        except WgraphError as e:
            said.append(Said(attempt, "error", e))
        except Exception as e:  # an op that cannot run on these tensors
            said.append(Said(attempt, "failed", e))
    error = _explain(conv, said)
    # Drop the fx interpreter's "While executing ..." appendix.
    raise type(error)(str(error.args[0]).split("\n\nWhile executing")[0]) from None


def _explain(conv: _Conversion, said: list[Said]) -> Exception:
    last = said[-1]
    if last.step in ("trace", "failed") and (bad_input := conv.bad_input()) is not None:
        return bad_input
    if last.step == "trace":
        first, *others = [s for s in said if s.step == "trace"]
        also = "".join(f"\n  {s.attempt.name} failed too: {s.error}" for s in others)
        return UnsupportedOperation(f"{first.error}{also}")
    if last.step == "failed":
        e = last.error
        return ConversionError(f"interpreting the traced {type(conv.model).__name__} failed: {type(e).__name__}: {e}")
    return last.error


def _in_mode(conv: _Conversion, attempts: tuple[Attempt, ...], train: bool) -> Built:
    conv.model.train(train)
    if train:  # training-mode BatchNorm needs two samples: repeat a batch of one along axis 0
        one = [isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == 1 for t in conv.inputs]
        args = tuple(torch.cat([t, t]) if doubled else t for t, doubled in zip(conv.inputs, one))
        conv = replace(conv, args=args, graphs={})
    return _first_success(conv, attempts, "train" if train else "eval")


def _in_training_mode(conv: _Conversion, attempts: tuple[Attempt, ...]) -> Built | None:
    """The layout of the training graph if it uses every parameter (the buffers that training-mode
    BatchNorm updates are restored), else None."""
    saved = {k: v.clone() for k, v in conv.model.named_buffers()}
    try:
        built = _in_mode(conv, attempts, train=True)
        return None if conv.unused(built.builder) else built
    except WgraphError:
        return None
    finally:
        for k, v in conv.model.named_buffers():
            v.copy_(saved[k])


def build_layout(model: nn.Module, example_input, concrete_args: dict | None = None, tracer: str = "auto") -> Layout:
    """Trace ``model`` and interpret it on ``example_input`` (a tensor or tuple of tensors).

    ``tracer``: ``"fx"`` (``torch.fx.symbolic_trace``: module-level ops, source locations in
    errors), ``"export"`` (``torch.export``: ATen ops, traces data-dependent Python control flow)
    or ``"auto"`` (fx, and export where fx cannot trace). The attempts are :data:`ATTEMPTS`.
    """
    if tracer not in FRONT_ENDS:
        raise ConversionError(f"tracer must be 'auto', 'fx' or 'export', got {tracer!r}")
    if not isinstance(model, nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(model).__name__}")
    REGISTRY.load_lazy()
    state = model.state_dict()
    state_keys = list(state)
    if not state_keys:
        raise ConversionError(f"{type(model).__name__} has no parameters: there is no weight graph to build")
    inputs = _as_tuple(example_input)
    # A bare leaf module (e.g. one nn.Linear) is traced inside a wrapper so its rule applies.
    leaf = REGISTRY.find("call_module", model) is not None
    conv = _Conversion(
        model=model,
        root=nn.Sequential(model) if leaf else model,
        inputs=inputs,
        args=inputs,
        concrete_args=concrete_args,
        state_keys=state_keys,
        aliases=_aliases(model),
        prefix="0." if leaf else "",
    )
    attempts = tuple(a for a in ATTEMPTS if a.front_end in FRONT_ENDS[tracer])
    was_training = model.training
    try:
        with torch.no_grad(), _without_cache(model):
            built = _in_mode(conv, attempts, train=False)  # no statistics updates, deterministic dropout
            if conv.unused(built.builder):  # parameters unused in eval mode (e.g. auxiliary heads)
                built = _in_training_mode(conv, attempts) or built
    finally:
        model.train(was_training)
    missing = conv.unused(built.builder)
    if missing:
        raise UnsupportedOperation(
            f"{type(model).__name__}: state-dict entries {missing} are not used by forward on the example input "
            "(or belong to modules the converter has no rule for); the graph could not restore them"
        )
    if not built.builder.blocks:
        raise ConversionError(f"{type(model).__name__}: no weight connects any neurons")
    # Module versions (``state_dict()._metadata``) that some modules check when loading.
    metadata = {k: dict(v) for k, v in getattr(state, "_metadata", {}).items()}
    meta = {
        "model": type(model).__name__,
        "traced_in": built.mode,
        "tracer": built.front_end,
        "state_dict_metadata": metadata,
    }
    layout = built.builder.build(state_keys, meta=meta)
    _check_shapes(model, layout, state)
    return layout


def _check_shapes(model: nn.Module, layout: Layout, state: dict) -> None:
    """Every parameter's place in the layout has the parameter's shape. A rule that recorded another
    shape is wgraph's mistake, said here as such (not later as a mismatched checkpoint)."""
    for slot in layout.params:
        if slot.where != "alias" and tuple(slot.shape) != tuple(state[slot.name].shape):
            raise ConversionError(
                f"{type(model).__name__}: internal error in wgraph's converter: parameter {slot.name!r} has shape "
                f"{tuple(state[slot.name].shape)}, its conversion rule recorded {tuple(slot.shape)}; please report this"
            )


@contextmanager
def _without_cache(model: nn.Module):
    """``transformers`` decoders return a key/value cache (``DynamicCache``) by default, which no
    front end can trace and which holds no parameter: ``config.use_cache`` is off while tracing
    (the weights and the hidden states do not depend on it) and restored afterwards."""
    found = (getattr(m, "config", None) for m in model.modules())
    configs = {id(c): c for c in found if getattr(c, "use_cache", False) is True}
    for c in configs.values():
        c.use_cache = False
    try:
        yield
    finally:
        for c in configs.values():
            c.use_cache = True


def _aliases(model: nn.Module) -> dict[str, str]:
    """Tied tensors appear under several state-dict names: every later name -> the first."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            aliases[name] = first[id(t)]
        else:
            first[id(t)] = name
    return aliases


def _as_tuple(example_input) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


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
