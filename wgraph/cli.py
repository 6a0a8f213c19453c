"""The ``wgraph`` command: ``convert``, ``info``, ``demo``, and the subcommands of other modules.

A module that adds a subcommand defines ``register(sub)``, which adds its parser to ``sub`` (an
``argparse`` subparsers object) and sets ``fn`` (called with the parsed arguments, returns the exit
status); it is listed in :data:`SUBCOMMAND_MODULES`. Keep those modules' imports light: heavy ones
belong inside ``fn``. A subcommand whose module cannot be imported because a package it needs is
missing stays listed, and running it says which package (exit status 2); a missing module of
wgraph itself is a bug and raises.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

import torch

from .errors import FileFormatError, MissingDependency, SpecError, WgraphError


def _convert(args) -> int:
    from .convert import to_graph
    from .convert.spec import load_checkpoint, parse_shape, resolve_spec

    out = Path(args.output)
    if not out.parent.exists():
        raise FileFormatError(f"cannot write {out}: directory {out.parent} does not exist")
    model = resolve_spec(args.spec)
    if args.checkpoint:
        sd = load_checkpoint(args.checkpoint)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise FileFormatError(f"checkpoint {args.checkpoint} does not fit {args.spec}: {e}") from None
    if args.input_shape:
        shape = parse_shape(args.input_shape)
    elif args.spec.startswith("torchvision:"):
        shape = (1, 3, 224, 224)
    elif isinstance(getattr(model, "example_input", None), torch.Tensor):
        shape = tuple(model.example_input.shape)
    else:
        raise SpecError(f"{args.spec}: pass --input-shape (e.g. --input-shape 1,784)")
    g = to_graph(model, example_input(shape, args.input_dtype, args.input_range))
    g.save(out)
    print(g.summary())
    print(f"wrote {out}")
    return 0


def example_input(shape: tuple[int, ...], dtype: str = "float", value_range: str | None = None) -> torch.Tensor:
    """A random example input: floats from N(0, 1), or integers (``long`` / ``int``, token ids)
    uniform in ``value_range`` ``"low,high"`` (high exclusive; default ``0,2``)."""
    kinds = {"float": torch.float32, "double": torch.float64, "long": torch.long, "int": torch.int32}
    if dtype not in kinds:
        raise SpecError(f"--input-dtype {dtype!r}: expected one of {list(kinds)}")
    if kinds[dtype].is_floating_point:
        if value_range is not None:
            raise SpecError("--input-range is for integer inputs (--input-dtype long or int)")
        return torch.randn(shape, dtype=kinds[dtype])
    try:
        low, high = (int(v) for v in (value_range or "0,2").split(","))
    except ValueError:
        raise SpecError(f"--input-range {value_range!r}: expected two integers LOW,HIGH") from None
    if high <= low:
        raise SpecError(f"--input-range {value_range!r}: HIGH must be above LOW")
    return torch.randint(low, high, shape, dtype=kinds[dtype])


def _info(args) -> int:
    from .graph import WeightGraph

    g = WeightGraph.load(args.file)
    print(g.summary())
    bad = g.has_nonfinite
    if bad:
        print(f"non-finite values in: {', '.join(bad)}")
    return 0


def _demo(args) -> int:
    from .demo import run

    return run(args.out, quick=args.quick)


#: Subcommands that other modules add: name -> the module whose ``register(sub)`` adds it.
SUBCOMMAND_MODULES = {
    "zoo": "wgraph.zoo.cli", "train": "wgraph.tasks.cli", "profile": "wgraph.profile", "distance": "wgraph.ot.cli"
}


def _register_modules(sub) -> None:
    for command, name in SUBCOMMAND_MODULES.items():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or e.name.split(".")[0] == "wgraph":
                raise
            _unavailable(sub, command, name, e.name)
            continue
        module.register(sub)


def _unavailable(sub, command: str, module: str, missing: str) -> None:
    """Subcommand ``command`` whose ``module`` needs the package ``missing``: running it says so."""

    def fn(args) -> int:
        raise MissingDependency(f"this command needs the package {missing!r}, which is not installed ({module})")

    p = sub.add_parser(command, help=f"(unavailable: needs the package {missing!r})", add_help=False)
    p.set_defaults(fn=fn, unavailable=True)  # takes any arguments: running it only explains


def build_parser() -> argparse.ArgumentParser:
    """The ``wgraph`` command's parser, every subcommand included."""
    parser = argparse.ArgumentParser(prog="wgraph", description="Neural networks as graphs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages (level INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="convert a model to a weight graph file (safetensors)")
    p.add_argument("spec", help="torchvision:NAME or package.module:factory")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("--checkpoint", help="state dict to load first (.safetensors, or .pt read with weights_only)")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (torchvision default)")
    p.add_argument("--input-dtype", default="float", help="float (default), double, long or int (token ids)")
    p.add_argument("--input-range", help="LOW,HIGH of integer inputs, e.g. 0,50000 for token ids (default 0,2)")
    p.set_defaults(fn=_convert)
    p = sub.add_parser("info", help="summarize a weight graph file")
    p.add_argument("file")
    p.set_defaults(fn=_info)
    p = sub.add_parser("demo", help="convert ResNet-18, train NFNs on a generated zoo, profile them (about 10 min)")
    p.add_argument("-o", "--out", default="wgraph-demo", help="directory for the demo's files (default wgraph-demo)")
    p.add_argument("--quick", action="store_true", help="toy sizes (about a minute)")
    p.set_defaults(fn=_demo)
    _register_modules(sub)
    return parser


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record comes (not when it was made)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _log_to_stderr(verbose: bool) -> None:
    """wgraph's loggers (``wgraph.*``) print to stderr: warnings always, progress with ``-v``."""
    logger = logging.getLogger("wgraph")
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if not any(getattr(h, "wgraph_cli", False) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("wgraph: %(levelname)s: %(message)s"))
        handler.wgraph_cli = True
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    # Specs such as `mypackage.models:make_net` import from the current directory, as `python -m`
    # would (the console script's sys.path does not hold it).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    _log_to_stderr(args.verbose)
    try:
        return args.fn(args)
    except WgraphError as e:
        print(f"wgraph {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
