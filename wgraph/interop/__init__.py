"""Bridges to other weight-space libraries (imported lazily: each peer is an optional dependency).

* :mod:`wgraph.interop.nfn`: ``nfn`` (Zhou et al.): ``WeightSpaceFeatures`` and NP/HNP layer parameters.
"""
