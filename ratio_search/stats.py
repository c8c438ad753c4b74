from .evidence.stats import *  # noqa: F403  # shim: removed at integration
