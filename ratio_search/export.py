from .evidence.export import *  # noqa: F403  # shim: removed at integration
