"""The ``wgraph`` command: ``convert``, ``info``, ``demo``, and the subcommands of other modules.

A module that adds a subcommand defines ``register(sub)``, which adds its parser to ``sub`` (an
``argparse`` subparsers object) and sets ``fn`` (called with the parsed arguments, returns the exit
status); it is listed in :data:`SUBCOMMAND_MODULES`. Keep those modules' imports light: heavy ones
belong inside ``fn``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from .errors import FileFormatError, SpecError, WgraphError


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
    g = to_graph(model, torch.randn(shape))
    g.save(out)
    print(g.summary())
    print(f"wrote {out}")
    return 0


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


#: Modules whose ``register(sub)`` adds a subcommand (``zoo``, ``train``, ``profile``).
SUBCOMMAND_MODULES = ("wgraph.zoo.cli", "wgraph.tasks.cli", "wgraph.profile")


def _register_modules(sub) -> None:
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a module still being written (development only)
            if e.name is None or not name.startswith(e.name):
                raise
            continue
        module.register(sub)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wgraph", description="Neural networks as graphs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="convert a model to a weight graph file (safetensors)")
    p.add_argument("spec", help="torchvision:NAME or package.module:factory")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("--checkpoint", help="state dict to load first (.safetensors, or .pt read with weights_only)")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (torchvision default)")
    p.set_defaults(fn=_convert)
    p = sub.add_parser("info", help="summarize a weight graph file")
    p.add_argument("file")
    p.set_defaults(fn=_info)
    p = sub.add_parser("demo", help="convert ResNet-18, train NFNs on a generated zoo, profile them (about 10 min)")
    p.add_argument("-o", "--out", default="wgraph-demo", help="directory for the demo's files (default wgraph-demo)")
    p.add_argument("--quick", action="store_true", help="toy sizes (about a minute)")
    p.set_defaults(fn=_demo)
    _register_modules(sub)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except WgraphError as e:
        print(f"wgraph {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
