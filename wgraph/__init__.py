"""wgraph: neural networks as graphs, for learning on their weights.

>>> import wgraph, torch
>>> g = wgraph.to_graph(torch.nn.Linear(3, 2), torch.randn(1, 3))
"""

from .convert import layout_of, load_into, to_graph, to_graph_batch
from .errors import (
    ConversionError,
    FileFormatError,
    IncompatibleBatchError,
    SpecError,
    StateDictError,
    UnsupportedOperation,
    WgraphError,
    ZooError,
)
from .graph import WeightGraph
from .layout import EdgeBlock, Layout, NeuronLayer, NeuronSpace, ParamSlot
from .symmetry import Symmetry, permute, random_symmetry

__version__ = "0.1.0"

__all__ = [
    # conversion and symmetry
    "to_graph", "to_graph_batch", "load_into", "layout_of", "random_symmetry", "permute", "Symmetry",
    # the graph and its layout
    "WeightGraph", "Layout", "NeuronLayer", "NeuronSpace", "EdgeBlock", "ParamSlot",
    # errors
    "WgraphError", "UnsupportedOperation", "ConversionError", "StateDictError",
    "IncompatibleBatchError", "SpecError", "FileFormatError", "ZooError",
]
