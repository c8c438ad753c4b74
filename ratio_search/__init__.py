"""ratio-search: find how much diffusion-generated synthetic data to mix into a real training set.

The public surface is small; modules prefixed by nothing here are stable, the rest is private.
"""

from importlib.metadata import PackageNotFoundError, version

from .config import Config, load_config, save_config
from .errors import (
    ConfigError,
    DataError,
    ModelError,
    PoolError,
    RatioSearchError,
    SearchError,
)
from .home import Home

try:  # pyproject.toml holds the number; this reads it from the installed distribution
    __version__ = version("ratio-search")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "Home",
    "ModelError",
    "PoolError",
    "RatioSearchError",
    "SearchError",
    "load_config",
    "save_config",
    "__version__",
]
