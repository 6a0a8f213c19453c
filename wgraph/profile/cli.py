"""``wgraph profile``: a grid of configurations measured, then the table, CSV, JSON and plots."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from .arch import ARCH_HELP
from .config import SCOPES, Config, ProfileError
from .measurement import MEM_CAP_GB, TIMEOUT_S, profile
from .methods import METHODS, default_methods
from .report import plot, table, write_csv


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t]
    except ValueError:
        raise ProfileError(f"expected comma-separated integers, got {text!r}") from None


def _config_option(p, name: str, **kwargs) -> None:
    """``--name``, with the default and help text of :class:`Config`'s field ``name``."""
    f = next(f for f in fields(Config) if f.name == name)
    p.add_argument(f"--{name}", type=type(f.default), default=f.default, help=f.metadata["help"], **kwargs)


def run(args) -> int:
    """The command: measure, print the table, write the files; exit status 1 if nothing ran."""
    import torch

    from ..convert.spec import parse_shape

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ProfileError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is false)")
    methods = args.methods.split(",") if args.methods else default_methods(args.device)
    for m in methods:
        if m not in METHODS:
            raise ProfileError(f"unknown method {m!r}; expected one of {list(METHODS)}")
    shape = parse_shape(args.input_shape) if args.input_shape else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(scope=args.scope, layers=args.layers, device=args.device, threads=args.threads, input_shape=shape)
    configs = [
        Config(args.arch, b, w, m, **common) for b in _ints(args.batch) for w in _ints(args.width) for m in methods
    ]
    print(f"profiling {args.arch}: {len(configs)} configurations, each in its own process")
    records = profile(configs, timeout=args.timeout, mem_cap_gb=args.mem_cap_gb, progress=not args.quiet)
    print(table(records))
    write_csv(records, out / "profile.csv")
    (out / "profile.json").write_text(json.dumps(records, indent=1) + "\n")
    written = [out / "profile.csv", out / "profile.json"]
    for x in ("width", "size"):
        p = plot(records, out / f"profile_{x}.png", x=x)
        if p:
            written.append(p)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0 if any(r["status"] == "ok" for r in records) else 1


def register(sub) -> None:
    """Add ``wgraph profile`` to the command's subparsers."""
    p = sub.add_parser("profile", help="memory and time of graph NFNs vs parameter-sharing layers on an architecture")
    p.add_argument("--arch", required=True, help=ARCH_HELP)
    p.add_argument("--batch", default="8", help="batch size(s), comma-separated (default 8)")
    p.add_argument("--width", default="16,32,64", help="width(s), comma-separated (default 16,32,64)")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all that can run)")
    _config_option(p, "scope", choices=SCOPES)
    _config_option(p, "layers")
    _config_option(p, "device", choices=("cpu", "cuda"))
    _config_option(p, "threads")
    p.add_argument("--input-shape", help="example input shape for module:factory specs, e.g. 1,3,32,32")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per configuration")
    p.add_argument("--mem-cap-gb", type=float, default=MEM_CAP_GB, help="skip configurations estimated above this")
    p.add_argument("-o", "--out", default="profile", help="output directory (CSV, JSON, PNG plots)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=run)
