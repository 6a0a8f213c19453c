"""Sliced and tree-sliced optimal transport (docs/ot.md): :func:`tree_sliced_wasserstein` (TSW-SL and
Db-TSW) on reusable tree systems (:mod:`.trees`), the :func:`sliced_wasserstein` baseline, distances
between networks that need no alignment (:mod:`.network`), and a sliced-Wasserstein set embedding
(:mod:`.embedding`). The ``wgraph distance`` command is in :mod:`.cli`.

>>> import torch
>>> from wgraph.ot import tree_sliced_wasserstein
>>> x, y = torch.randn(50, 3), torch.randn(40, 3) + 1
>>> d = tree_sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(0))
"""

from .embedding import SlicedWassersteinEmbedding
from .network import canonicalize, layer_distances, measured_layers, network_distance, neuron_measure
from .trees import TREE_KINDS, TreeSystem, sample_trees
from .tsw import SPLITS, sliced_wasserstein, split_masses, tree_sliced_wasserstein, tree_wasserstein, wasserstein_1d

__all__ = [
    # distances between measures
    "tree_sliced_wasserstein", "tree_wasserstein", "split_masses", "sliced_wasserstein", "wasserstein_1d",
    "TreeSystem", "sample_trees", "TREE_KINDS", "SPLITS",
    # networks
    "network_distance", "layer_distances", "neuron_measure", "canonicalize", "measured_layers",
    # set embedding
    "SlicedWassersteinEmbedding",
]
