"""Cached pools of generated images: the store, postprocessing, folder import and building.

- :mod:`.store`: a pool's key, reading, locked building, atomic publishing, listing;
- :mod:`.postprocess`: histogram matching and its reference (:func:`class_reference`);
- :mod:`.importer`: a folder of images from any other generator, as a pool;
- :mod:`.classes`: which classes receive synthetic images (one pool per class);
- :mod:`.build`: a pool for a model and a setting, a search space's grid x its classes, the
  ``generate`` command.
"""

from __future__ import annotations

from .build import (
    build_grid,
    build_one,
    build_space_pools,
    generate,
    get_pool,
    model_class_index,
    pool_grid,
    space_labels,
)
from .classes import synthetic_labels
from .importer import import_folder_pool
from .postprocess import (
    POSTPROCESS,
    class_reference,
    histogram_match,
    reference_for,
    reference_hash,
)
from .store import (
    POOL_FORMAT,
    Pool,
    list_pools,
    load_pool,
    pool_key,
    pool_store_size,
    update_manifest,
)

__all__ = [
    "POOL_FORMAT",
    "POSTPROCESS",
    "Pool",
    "build_grid",
    "build_one",
    "build_space_pools",
    "class_reference",
    "generate",
    "get_pool",
    "histogram_match",
    "import_folder_pool",
    "list_pools",
    "load_pool",
    "model_class_index",
    "pool_grid",
    "pool_key",
    "pool_store_size",
    "reference_for",
    "reference_hash",
    "space_labels",
    "synthetic_labels",
    "update_manifest",
]
