"""``wgraph zoo import FORMAT SRC OUT``: :func:`register_import` adds it to the ``zoo`` command."""

from __future__ import annotations

import sys


def register_import(kinds) -> None:
    """Add ``import FORMAT SRC OUT [--strict] [-q] [--shard-size N] [format options]`` to ``kinds``,
    the subparsers of the ``zoo`` command."""
    from .api import FORMATS, SHARD_SIZE

    p = kinds.add_parser("import", help="import a published model zoo or a folder of checkpoints (resumable)")
    formats = p.add_subparsers(dest="import_format", required=True)
    for name, module in FORMATS.items():
        f = formats.add_parser(name, help=module.HELP, description=module.HELP)
        f.add_argument("src", help="the source (directory, or file as the format allows)")
        f.add_argument("out", help="output zoo directory (rerun the same command to resume)")
        f.add_argument("--strict", action="store_true", help="fail at the first problem instead of skipping")
        f.add_argument("--shard-size", type=int, default=SHARD_SIZE, help=f"networks per shard (default {SHARD_SIZE})")
        f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        module.add_arguments(f)
        f.set_defaults(fn=_run)


def _run(args) -> int:
    from .api import FORMATS, import_zoo

    options = FORMATS[args.import_format].options(args)
    try:
        report = import_zoo(args.import_format, args.src, args.out, strict=args.strict, progress=not args.quiet,
                            shard_size=args.shard_size, **options)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the whole shards are in {args.out}: rerun the command to resume", file=sys.stderr)
        return 130
    print(report.summary())
    return 0
