"""Learned caches: map a cut's activation to (label, confidence). Importing this package registers every variant."""

from gati.cache.base import VARIANTS, Cache, FitReport, hparams_for, hparams_of, load_cache, make_cache
from gati.cache.reduce import make_reducer
from gati.neighbor_index import FaissIndex, NeighborIndex
from gati.reducer_names import REDUCERS, reduced_shape

# Imported in this order so VARIANTS lists the variants from cheapest to dearest lookup.
from gati.cache.linear import LinearCache  # isort: skip
from gati.cache.mlp import MlpCache  # isort: skip
from gati.cache.fc import FcCache  # isort: skip
from gati.cache.convfc import ConvFcCache  # isort: skip
from gati.cache.knn import KnnCache  # isort: skip

__all__ = [
    "REDUCERS",
    "VARIANTS",
    "Cache",
    "ConvFcCache",
    "FaissIndex",
    "FcCache",
    "FitReport",
    "KnnCache",
    "LinearCache",
    "MlpCache",
    "NeighborIndex",
    "hparams_for",
    "hparams_of",
    "load_cache",
    "make_cache",
    "make_reducer",
    "reduced_shape",
]
