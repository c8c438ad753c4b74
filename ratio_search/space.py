# shim: removed at integration
from .search.space import *  # noqa: F403
from .search.space import (  # noqa: F401
    METRICS,
    PARAMS,
    POOL_PARAMS,
    Param,
    Space,
    bundled_spaces,
    check_metric,
    load_space,
    parse_space,
    resolve_space_path,
)
