"""wgraph.config: typed dataclass configs (types, choices, ranges, unknown keys, nested tables) and the
command-line options derived from their fields."""

import argparse
from dataclasses import dataclass

import pytest

from wgraph.config import Config, add_arguments, field_values, from_args, option
from wgraph.errors import ConfigError, WgraphError


class ToyError(ConfigError):
    pass


@dataclass
class Inner(Config):
    size: int = option(4, "inner width", minimum=1)


@dataclass
class Toy(Config):
    error = ToyError

    name: str = option(help="a required name")
    width: int = option(16, "channels", minimum=1)
    depth: int = option(0, "layers", minimum=0)
    rate: float = option(0.5, "a fraction", minimum=0.0, below=1.0)
    lr: float = option(1e-3, "step size", above=0)
    act: str = option("relu", "nonlinearity", choices=("relu", "tanh"))
    pools: tuple[str, ...] = option(("mean",), "poolings", choices=lambda: ("mean", "max"), nonempty=True)
    steps: int | None = option(None, "optional count", minimum=1)
    verbose: bool = option(False, "talk")
    progress: bool = option(True, "the progress bar")
    inner: Inner = option(Inner(), "a table")


def test_values_are_typed_and_checked_on_construction():
    t = Toy("a", rate=0, pools=["max", "mean"])
    assert t.rate == 0.0 and isinstance(t.rate, float) and t.pools == ("max", "mean") and t.inner == Inner(4)
    assert Toy("a", pools="max").pools == ("max",)
    assert Toy("a").inner is not Toy("b").inner  # a nested default is copied per instance
    cases = [
        ({"width": "wide"}, "width must be an integer, got 'wide'"),
        ({"width": True}, "width must be an integer"),
        ({"verbose": 1}, "verbose must be true or false"),
        ({"rate": "x"}, "rate must be a number"),
        ({"act": "gelu"}, r"act = 'gelu' is not one of \['relu', 'tanh'\]"),
        ({"pools": ["mean", "sum"]}, "pools = 'sum' is not one of"),
        ({"pools": []}, "pools must not be empty"),
        ({"pools": [1]}, "pools must be a list of strings"),
        ({"width": 0}, "'width' must be a positive integer, got 0"),
        ({"depth": -1}, "depth must be >= 0, got -1"),
        ({"rate": 1.0}, r"rate must be in \[0.0, 1.0\), got 1.0"),
        ({"lr": 0}, "lr must be > 0, got 0.0"),
        ({"steps": 0}, "'steps' must be a positive integer"),
        ({"inner": 3}, "inner must be a table"),
    ]
    for values, match in cases:
        with pytest.raises(ToyError, match=match):
            Toy.from_dict({"name": "a", **values})
    with pytest.raises(ConfigError, match="'inner.size' must be a positive integer"):  # the table's own error class
        Toy.from_dict({"name": "a", "inner": {"size": 0}})
    assert issubclass(ToyError, WgraphError)


def test_unknown_and_missing_keys_are_named():
    with pytest.raises(ToyError, match=r"unknown key 'widht' for Toy; known keys: \['act', 'depth', .*'width'\]"):
        Toy.from_dict({"name": "a", "widht": 3})
    with pytest.raises(ConfigError, match=r"unknown key 'inner.sise' for Inner; known keys: \['inner.size'\]"):
        Toy.from_dict({"name": "a", "inner": {"sise": 3}})
    with pytest.raises(ToyError, match="missing key 'name'"):
        Toy.from_dict({})
    with pytest.raises(ToyError, match="must be a table"):
        Toy.from_dict([("name", "a")])


def test_replace_merges_tables_and_checks():
    t = Toy("a", inner=Inner(7))
    u = t.replace(width=3, inner={})
    assert (u.width, u.inner.size, u.name, t.width) == (3, 7, "a", 16)
    assert t.replace(inner=Inner(2)).inner.size == 2
    with pytest.raises(ToyError, match="unknown key 'hight'"):
        t.replace(hight=3)
    with pytest.raises(ConfigError, match="unknown key 'inner.x'"):
        t.replace(inner={"x": 1})
    assert t.to_dict()["pools"] == ["mean"] and t.to_dict()["inner"] == {"size": 7}


def test_command_line_options_come_from_the_fields():
    p = argparse.ArgumentParser()
    add_arguments(p, Toy, exclude=("inner",))
    help_text = p.format_help()
    assert "channels (default 16)" in help_text and "--no-progress" in help_text and "--verbose" in help_text
    args = p.parse_args(["--name", "n", "--pools", "max", "mean", "--steps", "3", "--no-progress", "--verbose"])
    t = from_args(Toy, args)
    assert (t.name, t.pools, t.steps, t.progress, t.verbose, t.width, t.rate) == ("n", ("max", "mean"), 3, False,
                                                                                  True, 16, 0.5)
    assert field_values(Inner, args) == {}
    for bad in (["--pools", "sum"], ["--act", "gelu"], []):  # choices, and --name is required (no default)
        with pytest.raises(SystemExit):
            p.parse_args(bad if not bad else ["--name", "n", *bad])
    with pytest.raises(ToyError, match="'width' must be a positive integer"):
        from_args(Toy, p.parse_args(["--name", "n", "--width", "0"]))


def test_add_arguments_reads_plain_dataclasses_and_overrides():
    @dataclass(frozen=True)
    class Plain:
        runs: int = 250
        init: str = "shared"

    p = argparse.ArgumentParser()
    add_arguments(p, Plain, ["runs", "init"], help={"runs": "training runs"}, choices={"init": ("shared", "other")},
                  required=("init",))
    assert "training runs (default 250)" in p.format_help()
    assert vars(p.parse_args(["--init", "other"])) == {"runs": 250, "init": "other"}
    with pytest.raises(SystemExit):
        p.parse_args([])
