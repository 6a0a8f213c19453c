"""``wgraph train``: train a preset on a zoo for a task (see :mod:`wgraph.tasks.trainer`).

Heavy imports (the trainer, torch.distributed, the zoo loader) happen inside :func:`_train`.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an NFN preset on a zoo (generalization prediction or INR classification)",
        description="Train a model preset on a zoo. Resume an interrupted run by repeating the command with --resume. "
        "Data-parallel: torchrun --nproc_per_node=N -m wgraph train ...",
    )
    p.add_argument("--task", required=True, choices=["generalization", "inr-classify"])
    p.add_argument("--model", required=True, help="preset name in models/ (gnn, gnn-pna, np, hnp, statnn, ...) or a .toml path")
    p.add_argument("--zoo", required=True, help="zoo directory (written by `wgraph zoo cnn` / `wgraph zoo inr`)")
    p.add_argument("--out", default="runs/train", help="output directory: results.json, checkpoint.pt, model.safetensors")
    p.add_argument("--seed", type=int, default=0, help="seed of initialization and data order (default 0)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split by group (default 0)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="epochs (default 10)")
    length.add_argument("--steps", type=int, help="optimizer steps instead of epochs")
    p.add_argument("--batch-size", type=int, default=32, help="networks per batch, over all processes (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--select", choices=["best-val", "last"], default="best-val",
                   help="test the epoch with the best validation metric (default) or the last")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (also every epoch end)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=_train)


def _train(args) -> int:
    import os

    from .trainer import TrainConfig, train

    config = TrainConfig(
        task=args.task, model=args.model, zoo=args.zoo, out=args.out, seed=args.seed, split_seed=args.split_seed,
        epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, select=args.select,
        checkpoint_every=args.checkpoint_every, device=args.device, resume=args.resume, progress=not args.no_progress,
    )  # fmt: skip
    results = train(config)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        test = results["metrics"]["test"]
        shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items())
        print(f"{config.task} {config.model}: test {shown} ({results['steps']} steps, {results['timings']['total_s']:.1f} s); "
              f"wrote {config.out}/results.json")  # fmt: skip
    return 0
