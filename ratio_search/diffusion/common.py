from . import GenerativeModel, ModelInfo, finetune, list_models, load_model, read_meta  # noqa: F401  # shim: removed at integration
