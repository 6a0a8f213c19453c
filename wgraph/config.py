r"""One configuration mechanism: typed dataclasses, from which presets and command lines are read.

A configuration is a dataclass deriving from :class:`Config`. A field's annotation is its type
(``bool``, ``int``, ``float``, ``str``, ``tuple[str, ...]``, ``X | None``, or a nested
:class:`Config`, which a TOML preset writes as a table), and :func:`option` writes its default, its
help text and its rules once::

    @dataclass
    class Example(Config):
        width: int = option(16, "channels of every layer", minimum=1)
        act: str = option("relu", "the nonlinearity", choices=("relu", "tanh"))

Every way of making one checks every value: ``Example(...)``, :meth:`Config.from_dict` (a parsed
preset; an unknown key is an error naming it and the known keys) and :meth:`Config.replace`. A
value must have the field's type (an integer where a number is expected becomes a float, a list or
a single string where a tuple of strings is expected becomes a tuple), be one of its ``choices``
(every item, for a tuple) and lie in its range: with ``minimum`` :math:`m`, ``above`` :math:`a` and
``below`` :math:`b`, the value :math:`v` must satisfy :math:`m \le v`, :math:`a < v` and
:math:`v < b`. A failed check raises the class's ``error``, :class:`~wgraph.errors.ConfigError` or
a subclass, and the message names the key (``readout.hidden`` for a key of a nested table).

Command lines come from the same fields: :func:`add_arguments` adds one option per field
(``--name-with-dashes``, with the field's type, default, choices and help; a ``bool`` is a switch,
``--name`` when it defaults to false and ``--no-name`` when it defaults to true), and
:func:`field_values` / :func:`from_args` read the parsed arguments back. A default is written once,
in the dataclass. :func:`add_arguments` reads any dataclass (help text from a field's
``metadata["help"]`` or from its ``help`` argument).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING
from typing import Any, ClassVar

from .errors import ConfigError


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    choices: Iterable | Callable[[], Iterable] | None = None,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    nonempty: bool = False,
) -> Any:
    """A config field: its ``default`` (none: the field is required), its ``help`` text and its rules.

    ``choices``: the allowed values (of every item, for a tuple field), or a function that returns
    them when a value is checked (for choices known only at run time, such as the installed
    backends). ``minimum`` / ``above`` / ``below``: the value must be ``>= minimum``, ``> above``,
    ``< below``. ``nonempty``: a tuple needs at least one item. A nested :class:`Config` default
    is copied for every instance.
    """
    metadata = {
        "help": help, "choices": choices, "minimum": minimum, "above": above, "below": below, "nonempty": nonempty
    }
    if isinstance(default, Config):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Config:
    """Base of the typed configuration dataclasses (see the module docstring).

    ``error``: the exception a bad value raises (:class:`~wgraph.errors.ConfigError` or a subclass).
    """

    error: ClassVar[type[ConfigError]] = ConfigError

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (and normalize it: integers to floats, lists to tuples); a bad value
        raises ``error`` naming its key."""
        cls = type(self)
        for f, hint in _fields(cls):
            object.__setattr__(self, f.name, _checked(cls, f, hint, getattr(self, f.name), f.name))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, base: Config | None = None, prefix: str = ""):
        """The config that ``values`` describes (e.g. a parsed TOML table; a nested table may be a
        dict). Keys it does not name keep ``base``'s values (default: the field defaults); an
        unknown key is an error. ``prefix`` is put before key names in messages (``"readout."``)."""
        if not isinstance(values, Mapping):
            raise cls.error(f"{prefix.rstrip('.') or cls.__name__} must be a table, got {values!r}")
        known = _fields(cls)
        names = sorted(f.name for f, _ in known)
        for key in values:
            if key not in names:
                raise cls.error(
                    f"unknown key {prefix + key!r} for {cls.__name__}; known keys: {[prefix + n for n in names]}"
                )
        out = {}
        for f, hint in known:
            if f.name in values:
                inner = getattr(base, f.name) if base is not None else None
                out[f.name] = _checked(cls, f, hint, values[f.name], prefix + f.name, inner)
            elif base is not None:
                out[f.name] = getattr(base, f.name)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise cls.error(f"missing key {prefix + f.name!r} for {cls.__name__}")
        return cls(**out)

    def replace(self, **changes):
        """A copy with ``changes`` (checked like :meth:`from_dict`); a dict for a nested table
        changes only the keys it names."""
        return type(self).from_dict(changes, base=self)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as TOML and JSON hold them: nested tables as dicts, tuples as lists."""
        out = {}
        for f, _ in _fields(type(self)):
            value = getattr(self, f.name)
            if isinstance(value, Config):
                value = value.to_dict()
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


# ----------------------------------------------------------------------------- checks
def _fields(cls) -> list[tuple[dataclasses.Field, Any]]:
    """The fields of dataclass ``cls`` that its constructor takes, with their evaluated types."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _optional(hint) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, ``(hint, False)`` otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"config fields support one type or 'X | None', not {hint}")
        return rest[0], len(rest) < len(args)
    return hint, False


def _choices(f: dataclasses.Field) -> tuple | None:
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


def _checked(cls, f: dataclasses.Field, hint, value, key: str, base=None):
    """``value`` of field ``f`` (type ``hint``), typed and checked against the field's rules."""
    error = cls.error
    hint, optional = _optional(hint)
    if value is None and optional:
        return None
    value = _typed(error, hint, value, key, base)
    if isinstance(value, Config):
        return value
    allowed = _choices(f)
    for item in value if isinstance(value, tuple) else (value,):
        if allowed is not None and item not in allowed:
            raise error(f"{key} = {item!r} is not one of {list(allowed)}")
    if f.metadata.get("nonempty") and not value:
        raise error(f"{key} must not be empty")
    _check_range(error, key, value, f.metadata)
    return value


def _typed(error: type[ConfigError], hint, value, key: str, base):
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            value.validate()
            return value
        if isinstance(value, Mapping):
            return hint.from_dict(value, base=base if isinstance(base, hint) else None, prefix=key + ".")
        raise error(f"{key} must be a table, got {value!r}")
    if typing.get_origin(hint) is tuple:
        if typing.get_args(hint) != (str, ...):
            raise TypeError(f"config fields support tuple[str, ...], not {hint}")
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise error(f"{key} must be a list of strings, got {value!r}")
        return tuple(value)
    if hint not in _SCALARS:
        raise TypeError(f"config field {key!r}: type {hint} is not supported")
    accepts, what = _SCALARS[hint]
    if not accepts(value):
        raise error(f"{key} must be {what}, got {value!r}")
    return hint(value)  # an integer where a number is expected becomes a float


#: The scalar field types: which values each accepts, and what the error says a value must be.
_SCALARS = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _check_range(error: type[ConfigError], key: str, value, rules: Mapping) -> None:
    lo, above, hi = rules.get("minimum"), rules.get("above"), rules.get("below")
    if (lo is None or value >= lo) and (above is None or value > above) and (hi is None or value < hi):
        return
    if lo == 1 and hi is None and isinstance(value, int):
        raise error(f"{key!r} must be a positive integer, got {value!r}")
    if lo is not None and hi is not None:
        need = f"in [{lo}, {hi})"
    elif lo is not None:
        need = f">= {lo}"
    elif above is not None:
        need = f"> {above}"
    else:
        need = f"< {hi}"
    raise error(f"{key} must be {need}, got {value!r}")


# ----------------------------------------------------------------------------- command lines
def add_arguments(
    parser,
    cls,
    names: Iterable[str] | None = None,
    *,
    exclude: Iterable[str] = (),
    required: Iterable[str] = (),
    help: Mapping[str, str] | None = None,
    types: Mapping[str, Callable[[str], Any]] | None = None,
    choices: Mapping[str, Iterable] | None = None,
) -> None:
    """Add one option per field of dataclass ``cls`` to ``parser`` (an ``argparse`` parser or group).

    ``names``: those fields, in that order (default: every field but ``exclude``). An option is
    ``--field-name``, with the field's default, its help text (``metadata["help"]``, or
    ``help[name]``) followed by the default, and its choices; a tuple field takes one or more
    values, a ``bool`` field is a switch (``--name`` sets a false default, ``--no-name`` clears a
    true one). A field without a default, or named in ``required``, is a required option.
    ``types``, ``choices``: a parser of the string and the allowed values per field, in place of the
    field's own (for dataclasses whose fields carry no rules).
    """
    fields = {f.name: (f, hint) for f, hint in _fields(cls)}
    excluded = set(exclude)
    for name in names if names is not None else [n for n in fields if n not in excluded]:
        f, hint = fields[name]
        flag = name.replace("_", "-")
        text = ((help or {}).get(name) or f.metadata.get("help", "")).replace("%", "%%")
        if f.default is not MISSING:
            default = f.default
        else:
            default = None if f.default_factory is MISSING else f.default_factory()
        needed = (f.default is MISSING and f.default_factory is MISSING) or name in required
        kind, _ = _optional(hint)
        if kind is bool:
            if default:
                parser.add_argument(f"--no-{flag}", dest=name, action="store_false", help=f"turn off: {text}")
            else:
                parser.add_argument(f"--{flag}", dest=name, action="store_true", help=text)
            continue
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        if not needed and default is not None:
            text = f"{text} (default {shown})" if text else f"default {shown}"
        kw: dict[str, Any] = {"dest": name, "help": text}
        if typing.get_origin(kind) is tuple:
            kw["nargs"], kind = "+", str
        kw["type"] = (types or {}).get(name, kind)
        allowed = (choices or {}).get(name) or _choices(f)
        if allowed is not None:
            kw["choices"] = list(allowed)
        if needed:
            kw["required"] = True
        else:
            kw["default"] = default
        parser.add_argument(f"--{flag}", **kw)


def field_values(cls, args: argparse.Namespace) -> dict[str, Any]:
    """The values of ``cls``'s fields that the parsed ``args`` hold (those :func:`add_arguments`
    added), by field name; a tuple field's list of values as a tuple."""
    out = {}
    for f, _ in _fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def from_args(cls, args: argparse.Namespace, **values):
    """``cls`` built from the parsed ``args`` (:func:`field_values`); ``values`` add or replace fields."""
    return cls(**{**field_values(cls, args), **values})
