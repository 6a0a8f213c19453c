"""``wgraph zoo cnn OUT`` and ``wgraph zoo inr OUT``: generate (or resume) a model zoo."""

from __future__ import annotations

import argparse
import sys


def _images(value: str) -> int | None:
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected 'all' or a positive integer, got {value!r}")
    return n


def _interruptible(fn):
    """Ctrl-C: say how to resume instead of a traceback (every whole shard is kept)."""

    def run(args) -> int:
        try:
            return fn(args)
        except KeyboardInterrupt:
            msg = f"interrupted; the finished shards are in {args.out}: rerun the same command to resume"
            print(f"\n{msg}", file=sys.stderr)
            return 130

    return run


@_interruptible
def _cnn(args) -> int:
    from .cnn import generate_cnn_zoo

    zoo = generate_cnn_zoo(args.out, runs=args.runs, checkpoints=args.checkpoints, epochs=args.epochs, seed=args.seed,
                           shard_size=args.shard_size, progress=not args.quiet, threads=args.threads)  # fmt: skip
    dropped = args.runs * args.checkpoints - len(zoo)
    note = f" ({dropped} diverged checkpoints not stored)" if dropped else ""
    print(f"wrote {len(zoo)} CNNs ({args.runs} runs x {args.checkpoints} checkpoints){note} to {args.out}")
    return 0


@_interruptible
def _inr(args) -> int:
    from .inr import generate_inr_zoo

    zoo = generate_inr_zoo(args.out, images=args.images, steps=args.steps, seed=args.seed, init=args.init,
                           shard_size=args.shard_size, progress=not args.quiet, threads=args.threads)  # fmt: skip
    print(f"wrote {len(zoo)} INRs (mean reconstruction MSE {zoo.table['recon_mse'].mean():.3g}) to {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("zoo", help="generate a model zoo (resumable: rerun the same command to continue)")
    kinds = p.add_subparsers(dest="zoo_kind", required=True)
    c = kinds.add_parser("cnn", help="small CNNs trained on digits with sampled hyperparameters")
    c.add_argument("out", help="output directory")
    c.add_argument("--runs", type=int, default=250, help="training runs (default 250)")
    c.add_argument("--checkpoints", type=int, default=4, help="checkpoints stored per run (default 4)")
    c.add_argument("--epochs", type=int, default=20, help="epochs per run (default 20)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--shard-size", type=int, default=50, help="runs per shard, trained together (default 50)")
    c.add_argument("--threads", type=int, default=1, help="torch threads (default 1, the fastest measured)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(fn=_cnn)
    i = kinds.add_parser("inr", help="SIREN INRs fitted to every digits image")
    i.add_argument("out", help="output directory")
    i.add_argument("--images", type=_images, default=None, help="'all' (default) or N: the first N images")
    i.add_argument("--steps", type=int, default=300, help="Adam steps per INR (default 300)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--init", choices=["shared", "independent"], default="shared",
                   help="'shared' (default): one SIREN initialization, drawn from --seed, for every INR; "
                   "'independent': each INR its own")
    i.add_argument("--shard-size", type=int, default=600, help="INRs per shard, fitted together (default 600)")
    i.add_argument("--threads", type=int, default=1, help="torch threads (default 1, the fastest measured)")
    i.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    i.set_defaults(fn=_inr)
