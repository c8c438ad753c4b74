from .train.mixing import MODES, Mixed, mix, synthetic_needed  # noqa: F401  # shim: removed at integration
