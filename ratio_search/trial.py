from .train.trial import *  # noqa: F403  # shim: removed at integration
