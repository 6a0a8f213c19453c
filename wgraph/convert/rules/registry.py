"""How a conversion rule is registered and looked up.

A rule is a function ``rule(builder, op)``: it receives the
:class:`~wgraph.convert.builder.LayoutBuilder` and an :class:`Op` (the fx node, its concrete
argument values from the example input, the metas of its arguments) and returns the meta of the
op's result: a :class:`~wgraph.convert.builder.Feat` (which layer's neurons lie on which axis), a
:class:`~wgraph.convert.builder.Raw` (input-only data) or ``None`` (not a tensor, or a constant).

A rule is registered for the ops it converts, by module type (``call_module``), by function
(``call_function``, ATen ops of ``torch.export`` graphs included) or by method name
(``call_method``). The registration also declares what the rest of the converter needs to know
about those ops (:class:`Declared`): which scalings of the neurons they commute with, which node
feature a per-neuron parameter operand becomes, how an identity block that joins two layers is
labelled, how many spatial axes a pooling op reduces. One object, :data:`REGISTRY`, holds every
registration; everything else is derived from it.

An op with no rule raises :class:`~wgraph.errors.UnsupportedOperation`; a rule raises it too
whenever the op would move, mix or single out hidden neurons in a way the graph cannot represent
exactly. Permitting such an op silently would produce a wrong symmetry.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ...errors import UnsupportedOperation
from ..builder import Feat, LayoutBuilder, Param, Raw

Rule = Callable[[LayoutBuilder, "Op"], Any]

#: What a neuron-wise op may declare as its ``scaling``: a scaling group of
#: :data:`wgraph.layout.SCALING_GROUPS` (``f(s x) = s f(x)`` holds for every ``s`` of the group:
#: ``"real"`` for linear ops, ``"positive"`` for positively homogeneous ones such as ReLU, ``"sign"``
#: for odd ones such as tanh, ``"none"`` otherwise), or ``"dividend"``: ``x / c`` is linear in the
#: neurons ``x``, ``c / x`` is not, so the group is ``"real"`` only when the neurons are the dividend.
SCALINGS = ("real", "positive", "sign", "none", "dividend")

#: The fx node kinds a rule can be registered for.
KINDS = ("call_module", "call_function", "call_method")


@dataclass(frozen=True)
class Declared:
    """What one registration says about the ops it names.

    ``scaling``: see :data:`SCALINGS`; an op with two or more neuron operands (``x * x``) commutes
    with no scaling, whatever it declares. ``param_feature``: the node feature that a parameter
    with one value per neuron becomes when it is an operand (``x * self.gamma``: ``"scale"``);
    ``None`` rejects such parameters. ``merge_label``: the name prefix of the identity block that
    joins two layers combined by the op (``"skip"`` for a residual addition). ``pooled_axes``: the
    number of trailing spatial axes a pooling op reduces (0 for other ops).
    """

    rule: Rule
    scaling: str = "none"
    param_feature: str | None = None
    merge_label: str = "merge"
    pooled_axes: int = 0


@dataclass
class Op:
    """One fx node being converted, with concrete values from the example input and what the
    registration of its rule declared (``None`` for an op without a rule)."""

    node: torch.fx.Node
    where: str
    module: nn.Module | None
    args: tuple
    kwargs: dict
    metas: tuple
    kwmetas: dict
    out: Any
    declared: Declared | None = None

    def tensors(self) -> list[tuple[torch.Tensor, Any]]:
        """``(value, meta)`` of every tensor argument, positional then keyword."""
        pairs = list(zip(self.args, self.metas)) + [(v, self.kwmetas[k]) for k, v in self.kwargs.items()]
        return [(v, m) for v, m in pairs if isinstance(v, torch.Tensor)]

    def feats(self) -> list[tuple[torch.Tensor, Feat]]:
        """``(value, meta)`` of every tensor argument that carries hidden neurons."""
        return [(v, m) for v, m in self.tensors() if isinstance(m, Feat)]

    def raw(self) -> Raw | None:
        """The meta of the first tensor argument computed from the inputs only, if any."""
        return next((m for _, m in self.tensors() if isinstance(m, Raw)), None)

    def arg(self, i: int, name: str, default=None):
        """Argument ``i`` (positional) or ``name`` (keyword)."""
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)

    def meta(self, i: int, name: str):
        """The meta of argument ``i`` (positional) or ``name`` (keyword)."""
        if len(self.args) > i:
            return self.metas[i]
        return self.kwmetas.get(name)

    def pair(self, i: int, name: str) -> tuple[Any, Any]:
        """Value and meta of argument ``i`` (positional) or ``name`` (keyword)."""
        return self.arg(i, name), self.meta(i, name)

    def param(self, i: int, name: str) -> tuple[torch.Tensor | None, Param | None]:
        """Value and meta of an optional parameter argument (``F.linear``'s weight and bias);
        ``(None, None)`` when it is absent. A computed tensor in its place is unsupported."""
        value, meta = self.pair(i, name)
        if value is None:
            return None, None
        if not isinstance(meta, Param) or meta.derived:
            raise UnsupportedOperation(
                f"{self.where}: the {name} is computed, not a parameter; only parameters are supported"
            )
        if math.prod(meta.shape) != value.numel():
            raise UnsupportedOperation(f"{self.where}: the {name} is a part of parameter {meta.name!r}, not all of it")
        return value, meta


def aten_op(name: str):
    """``"relu.default"`` -> ``torch.ops.aten.relu.default`` (a name without overload: the packet)."""
    packet, _, overload = name.partition(".")
    op = getattr(torch.ops.aten, packet)
    return getattr(op, overload) if overload else op


class Registry:
    """Every conversion rule, keyed by the ops it converts, with what each registration declares."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[Any, Declared]] = {kind: {} for kind in KINDS}
        self._lazy: dict[str, Callable[[Registry], None]] = {}
        self._loaded: set[str] = set()

    def register(
        self,
        *,
        modules: tuple[type, ...] = (),
        functions: tuple[Callable, ...] = (),
        methods: tuple[str, ...] = (),
        aten: tuple[str, ...] = (),
        scaling: str = "none",
        param_feature: str | None = None,
        merge_label: str = "merge",
        pooled_axes: int = 0,
    ) -> Callable[[Rule], Rule]:
        """Decorator: the rule converts these module types, functions, tensor methods and ATen ops
        (``aten`` names such as ``"linear.default"``, as in ``torch.export`` graphs); the other
        arguments are what the registration declares (:class:`Declared`). A rule may be registered
        several times with different declarations; an op may have one rule only."""
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")

        def deco(rule: Rule) -> Rule:
            declared = Declared(rule, scaling, param_feature, merge_label, pooled_axes)
            keys = {"call_module": modules, "call_function": (*functions, *map(aten_op, aten)), "call_method": methods}
            for kind, targets in keys.items():
                for target in targets:
                    known = self._tables[kind].setdefault(target, declared)
                    if known != declared:
                        raise ValueError(f"{target!r} has two conversion rules: {known} and {declared}")
            return rule

        return deco

    def lazy(self, package: str, register: Callable[[Registry], None]) -> None:
        """Rules for functions of an optional ``package``: ``register(registry)`` runs once the package
        has been imported (a model that uses them imported it already; importing it here would slow
        down ``import wgraph``). :meth:`load_lazy` runs before every trace."""
        self._lazy[package] = register

    def load_lazy(self) -> None:
        for package, register in self._lazy.items():
            if package in sys.modules and package not in self._loaded:
                self._loaded.add(package)
                register(self)

    def find(self, kind: str, target) -> Declared | None:
        """The registration for an fx node: ``kind`` is its op, ``target`` the called module object
        (``call_module``), function or method name."""
        if kind == "call_module":
            target = type(target)
        return self._tables[kind].get(target) if kind in self._tables else None

    def entries(self) -> Iterator[tuple[str, Any, Declared]]:
        """``(kind, target, declared)`` of every registered op."""
        for kind, table in self._tables.items():
            for target, declared in table.items():
                yield kind, target, declared

    def supported_ops(self) -> str:
        """A readable list of everything the converter has a rule for."""
        modules, functions, methods = (self._tables[kind] for kind in KINDS)
        aten = [f for f in functions if isinstance(f, torch._ops.OpOverload)]
        names = sorted({getattr(f, "__name__", str(f)) for f in functions if not isinstance(f, torch._ops.OpOverload)})
        names.append(f"and {len(aten)} ATen ops (torch.export graphs)")
        return (
            f"modules: {', '.join(sorted({t.__name__ for t in modules}))}\n  functions: {', '.join(names)}\n"
            f"  tensor methods: {', '.join(sorted(methods))}"
        )


#: The one registry of the converter; the rule modules of this package register into it on import.
REGISTRY = Registry()
register = REGISTRY.register


def supported_ops() -> str:
    """A readable list of everything the converter has a rule for."""
    return REGISTRY.supported_ops()
