r"""Memory and runtime of neural functionals on one architecture, each configuration in its own process.

A *configuration* is an architecture, a batch size ``B`` (networks), a width ``C`` (channels or node
state size), a *method* and a *scope*:

* methods: ``gnn-<backend>`` (the graph NFN with message passing through that
  :mod:`wgraph.kernels` backend: ``reference``, ``fused``, ``pyg``, ``scatter``, ``triton``), the
  parameter-sharing layers ``np``, ``hnp``, ``monomial``, ``magep``, ``magep-paper`` (:mod:`wgraph.nn`), and ``nfn``'s
  ``nfn-np`` / ``nfn-hnp`` when that package is installed;
* scope ``layer``: one ``C -> C`` layer, forward, and backward from fixed random gradients of its
  outputs, on node states ``(B, N, C)`` (graph NFN; the edge inputs are the raw weights, re-lifted
  inside the kernel) or on a ``C``-channel weight-space input (parameter-sharing layers), inputs
  requiring gradients;
* scope ``model``: one training step (forward, MSE loss, backward, Adam step) of a whole model of
  ``layers`` layers of width ``C`` built from the method's preset (``models/gnn.toml``,
  ``np.toml``, ...) on the raw weights.

Every configuration runs in a fresh subprocess (``python -m wgraph.profile --worker JSON``) so that
the allocations of one cannot hide in another's peak. Memory:

* CPU: a second process measures memory, started with glibc told to serve every allocation of
  64 KB or more from a mapping of its own, unmapped when freed (``MALLOC_MMAP_THRESHOLD_=65536``).
  After the inputs are built and a warm-up step has run, ``malloc_trim(0)`` hands every free page
  of the heap back to the OS and the resident-set high-water mark (``VmHWM``) is reset
  (``/proc/self/clear_refs``); ``step_mb`` is the high-water mark of one more step minus the
  resident size at the reset. The peak then follows the live tensors and every other allocation
  (the native kernels' own buffers, the heap of small objects), not where the heap's free chunks
  happen to lie: with glibc's default settings a step's peak moved by 50-150 MB from run to run.
  ``total_mb`` adds the inputs (resident size after the inputs minus after the imports). Time is
  measured in the first process, with the default settings (a mapping per allocation costs page
  faults).
* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
  allocated before the step (``step_mb``); ``total_mb`` is the peak itself.

Time is the best of ``reps`` steps after one warm-up step (which builds kernels, allocates caches and
optimizer state), or of more steps (up to 50) while they have taken under a second in all; steps
stop repeating once they have taken 10 s in all; CUDA steps are synchronized. A
configuration a method cannot represent is recorded with the reason (the method's model class says
so: ``GraphNFN.supports(layout)``, ``ParamSharingNFN.supports(layout)``; parameter-sharing layers
need a chain of layers, for example); one whose estimated memory exceeds the cap is skipped with the
estimate; one that runs past the timeout is recorded as such. :func:`profile` runs a grid of
configurations and returns records; :func:`write_csv` and :func:`plot` write them out. The command
``wgraph profile`` does all of it.

The package, in reading order: :mod:`~wgraph.profile.config` (:class:`Config`, what one measurement
is), :mod:`~wgraph.profile.arch` (architecture specs, their graphs and random batches),
:mod:`~wgraph.profile.methods` (what a method is, whether it can run a configuration, and the step it
builds), :mod:`~wgraph.profile.measurement` (the worker, CPU / CUDA memory and time, the processes),
:mod:`~wgraph.profile.report` (table, CSV, plots) and :mod:`~wgraph.profile.cli` (``wgraph profile``).
"""

from .arch import ARCH_HELP, graph_of, layout_of, network_size, random_batch, resolve_arch
from .cli import register
from .config import SCOPES, Config, ProfileError
from .measurement import (
    MEM_CAP_GB,
    MEMORY_ENV,
    TIMEOUT_S,
    WorkerFailed,
    measure,
    profile,
    run_isolated,
    run_measurement,
    run_worker,
)
from .methods import GNN_BACKENDS, METHODS, NFN_METHODS, PS_METHODS, default_methods, estimate_gb, unsupported_reason
from .report import COLUMNS, plot, table, write_csv

__all__ = [
    "Config", "ProfileError", "SCOPES", "METHODS", "GNN_BACKENDS", "PS_METHODS", "NFN_METHODS",
    "ARCH_HELP", "resolve_arch", "graph_of", "layout_of", "random_batch", "network_size",
    "unsupported_reason", "estimate_gb", "default_methods",
    "MEMORY_ENV", "TIMEOUT_S", "MEM_CAP_GB", "measure", "WorkerFailed", "run_worker", "run_measurement",
    "run_isolated", "profile", "COLUMNS", "table", "write_csv", "plot", "register",
]
