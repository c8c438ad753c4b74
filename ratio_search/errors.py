"""The one exception family. The CLI turns any of these into one line on stderr and exit 2."""

from __future__ import annotations


class RatioSearchError(Exception):
    """Base class of every error ratio-search raises on purpose (bad input, missing files...)."""


class ConfigError(RatioSearchError):
    """A config file, search space or command-line value is invalid."""


class DataError(RatioSearchError):
    """A dataset is missing, empty, unreadable or too small."""


class PoolError(RatioSearchError):
    """A pool of generated images is missing, too small or cannot be built."""


class ModelError(RatioSearchError):
    """A diffusion model path is missing or is not a saved model."""


class SearchError(RatioSearchError):
    """A search run is unknown, unfinished, or cannot be started or resumed."""
