from .train.cnn import MEAN, STD, SimpleCNN, normalize  # noqa: F401  # shim: removed at integration
from .train.loop import TrainResult, compute_metrics, evaluate, predict_proba, train_classifier  # noqa: F401,E501  # shim: removed at integration
