from .evidence.confirm import *  # noqa: F403  # shim: removed at integration
from .evidence.export import export_with_confirmation  # noqa: F401  # shim: removed at integration
