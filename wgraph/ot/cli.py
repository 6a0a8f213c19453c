"""``wgraph distance A B``: how far apart two networks of one architecture are, with no alignment.

A and B are weight graph files (``wgraph convert``), or checkpoints with ``--spec`` and
``--input-shape``. Prints the tree-sliced, sliced and exact (optimal matching) distances of
:func:`wgraph.ot.network_distance`, and with ``--per-layer`` each layer's share.
"""

from __future__ import annotations

from .network import METHODS


def _graphs(args):
    """``(g, index_a, index_b)``: one graph holding both networks, or two graph files."""
    if args.spec:
        import torch

        from ..convert import to_graph_batch
        from ..convert.spec import load_checkpoint, parse_shape, resolve_spec
        from ..errors import SpecError

        if not args.input_shape:
            raise SpecError("with --spec, pass --input-shape (e.g. --input-shape 1,784)")
        model = resolve_spec(args.spec)
        sds = [load_checkpoint(args.a), load_checkpoint(args.b)]
        g = to_graph_batch(sds, model, torch.randn(parse_shape(args.input_shape)))
        return g, g, 0, 1
    from ..graph import WeightGraph

    return WeightGraph.load(args.a), WeightGraph.load(args.b), args.index_a, args.index_b


def _distance(args) -> int:
    from .network import layer_distances

    g1, g2, i1, i2 = _graphs(args)
    options = dict(index1=i1, index2=i2, masses=args.masses, n_trees=args.trees, n_lines=args.lines,
                   kind=args.kind, split=args.split, seed=args.seed)
    for method in args.method or METHODS:
        per_layer = layer_distances(g1, g2, method, **options)
        print(f"{method:<6} {float(sum(per_layer.values())):.6g}")
        if args.per_layer:
            for name, d in per_layer.items():
                print(f"    {name:<24} {float(d):.6g}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("distance", help="distance between two networks of one architecture (no alignment needed)")
    p.add_argument("a", help="weight graph file (.safetensors from 'wgraph convert'), or a checkpoint with --spec")
    p.add_argument("b", help="the second network, as A")
    p.add_argument("--spec", help="A and B are checkpoints of this model: torchvision:NAME or package.module:factory")
    p.add_argument("--input-shape", help="example input shape for --spec, e.g. 1,784")
    p.add_argument("--index-a", type=int, default=0, help="network of a batched graph file A (default 0)")
    p.add_argument("--index-b", type=int, default=0, help="network of a batched graph file B (default 0)")
    p.add_argument("--method", action="append", choices=METHODS, help="tsw, sw or exact (repeat; default all three)")
    p.add_argument("--masses", choices=["uniform", "norm"], default="uniform",
                   help="neuron masses: uniform (default) or the norms of their outgoing weights")
    p.add_argument("--trees", type=int, default=64, help="trees (tsw), or trees x lines projections (sw); default 64")
    p.add_argument("--lines", type=int, default=4, help="lines per tree (default 4)")
    p.add_argument("--kind", choices=["concurrent", "chain"], default="concurrent", help="tree systems (tsw)")
    p.add_argument("--split", choices=["distance", "uniform"], default="distance", help="mass splitting (tsw)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random trees / directions (default 0)")
    p.add_argument("--per-layer", action="store_true", help="print each layer's distance too")
    p.set_defaults(fn=_distance)
