"""``python -m wgraph.profile --worker JSON [--part time|memory|both]``: one measurement, printed as JSON
(the process :func:`wgraph.profile.run_isolated` starts)."""

import sys

from .measurement import worker_main

if __name__ == "__main__":
    worker_main(sys.argv[1:])
