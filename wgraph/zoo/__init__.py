"""Model zoos: reference architectures (:mod:`.archs`), the in-memory :class:`Zoo` (:mod:`.dataset`),
the directory format with resumable writing and verified loading (:mod:`.store`), and generators of
real zoos trained on scikit-learn's ``digits``: small CNNs (:mod:`.cnn`) and SIREN INRs (:mod:`.inr`), and
importers of published zoos and checkpoint folders (:mod:`.importers`, :func:`import_zoo`).

>>> from wgraph.zoo import load_zoo
>>> # zoo = load_zoo("zoos/cnn"); zoo.graphs()  -> WeightGraph of every network
"""

from .archs import ARCHITECTURES, digits_cnn, mlp, register_arch, resnet_mlp, siren, small_cnn
from .cnn import generate_cnn_zoo
from .dataset import Zoo
from .importers import ImportReport, import_zoo
from .inr import generate_inr_zoo
from .store import ZooWriter, load_zoo
from .transformer import RowTransformer, generate_transformer_zoo  # registers row_transformer

__all__ = [
    "Zoo", "ZooWriter", "load_zoo", "generate_cnn_zoo", "generate_inr_zoo", "import_zoo", "ImportReport",
    "generate_transformer_zoo", "RowTransformer",
    "ARCHITECTURES", "register_arch", "digits_cnn", "siren", "mlp", "resnet_mlp", "small_cnn",
]
