"""``wgraph zoo canonicalize SRC DST``: a copy of a zoo whose every network went through
:func:`~wgraph.attention_symmetry.canonicalize_attention`.

Each head's ``(W_Q^h, W_K^h)`` and ``(W_V^h, W_O^h)`` are replaced by the balanced SVD factors of
their products ``W_Q^h W_K^hT`` and ``W_V^h W_O^h``: the networks compute the same functions (to
rounding: the SVD runs in float64, the result is stored in the zoo's dtype), and two networks in
one orbit of the per-head ``GL(d_k) x GL(d_v)`` maps become the same point, so any permutation-
invariant model (a graph NFN, StatNN) trained on the copy is invariant to the whole attention
group. The copy has the source's format, kind, architecture and table; its manifest's config is
the source's plus ``canonicalized_from`` (the sha256 of every source shard). Source shard ``i``
becomes shard ``i`` of the copy, written by :class:`~wgraph.zoo.store.ZooWriter`: an interrupted
run resumes, and a copy made from other source shards is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ZooError


def canonicalize_zoo(src, dst, *, progress: bool = False):
    """Write the canonicalized copy of the zoo in directory ``src`` to directory ``dst`` (module
    docstring); returns the loaded copy. Raises :class:`~wgraph.errors.ZooError` if ``src`` is not
    a complete zoo or its architecture has no attention to canonicalize."""
    from tqdm.auto import tqdm

    from ..attention_symmetry import attention_parts, canonicalize_attention
    from . import transformer  # noqa: F401  registers row_transformer, the architecture of `wgraph zoo transformer`
    from .store import ZooWriter, load_zoo, read_manifest

    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ZooError(f"{dst}: the canonicalized copy must go to another directory than its source")
    zoo = load_zoo(src)
    manifest = read_manifest(src)
    shards = sorted(manifest["shards"], key=lambda s: s["index"])
    template = zoo.graphs(slice(0, 1)) if len(zoo) else None
    if template is None or not attention_parts(template.layout):
        raise ZooError(f"{src}: {zoo.arch['name']!r} has no attention (or the zoo is empty): nothing to canonicalize")
    config = {**zoo.config, "canonicalized_from": [s["sha256"] for s in shards]}
    writer = ZooWriter(dst, kind=zoo.kind, arch=zoo.arch, columns=manifest["columns"], config=config)
    with writer:
        start = 0
        for s in tqdm(shards, desc="canonicalize", unit="shard", disable=not progress):
            rows = slice(start, start + s["count"])
            start += s["count"]
            if writer.has_shard(s["index"]):
                continue
            weights = {k: v[rows] for k, v in zoo.weights.items()}
            if s["count"]:
                graph = zoo.graphs(rows)
                canon = canonicalize_attention(graph.to(torch.float64)).to(graph.dtype)
                weights.update({p.name: canon.param(p.name) for p in graph.layout.params})
            writer.write_shard(s["index"], weights, s["table"])
        writer.finish()
    return load_zoo(dst)


def register_canonicalize(kinds) -> None:
    """``wgraph zoo canonicalize SRC DST``, added to ``wgraph zoo``'s subparsers ``kinds``."""
    p = kinds.add_parser("canonicalize", help="copy a zoo with every attention head in its canonical GL form "
                                              "(same functions; models trained on it become GL-invariant)")
    p.add_argument("src", help="a complete zoo directory (e.g. from `wgraph zoo transformer`)")
    p.add_argument("out", help="output directory (resumable: rerun the same command to continue)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    def run(args) -> int:
        zoo = canonicalize_zoo(args.src, args.out, progress=not args.quiet)
        print(f"wrote {len(zoo)} canonicalized networks to {args.out}")
        return 0

    p.set_defaults(fn=run)
