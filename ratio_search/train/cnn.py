"""The classifier of a trial: the reference study's small CNN, its fixed input normalisation and
:func:`build_model`, which picks the classifier ``train.arch`` names (the residual network of
``arch: resnet`` lives in :mod:`.resnet`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError

# Fixed intensity normalisation, applied identically to real and synthetic images: x/255, then
# (x - MEAN) / STD. It is a constant, not a statistic of the (R-dependent) training set, so that
# the input scale of a model never depends on how much synthetic data it saw.
MEAN = 0.5
STD = 0.5


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32, x/255 then (x - MEAN)/STD (the same for real and synthetic)."""
    return (x.float() / 255.0 - MEAN) / STD


class SimpleCNN(nn.Module):
    """The reference study's CNN: conv blocks (3x3 conv, ReLU, 2x2 max-pool), FC + ReLU, FC.

    The study used widths 16/32/64 and a 128-unit hidden layer; ``widths`` and ``fc`` shrink it
    for tests (``widths=(4, 4), fc=8`` is about a thousand parameters at 16 px).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        image_size: int | tuple[int, int] = 32,
        widths: Sequence[int] = (16, 32, 64),
        fc: int = 128,
    ) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        blocks: list[nn.Module] = []
        c = in_channels
        for width in widths:
            blocks += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c = width
            h, w = h // 2, w // 2  # max-pool floors odd sizes
        if h < 1 or w < 1:
            raise ConfigError(
                f"image size {image_size} is too small for {len(widths)} pooling blocks "
                f"(needs at least {2 ** len(widths)} px)"
            )
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, fc), nn.ReLU(), nn.Linear(fc, n_classes)
        )

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden FC layer's activations ``(N, fc)`` (the penultimate features) of
        normalised float images ``(N, C, H, W)``.

        The numbers of ``self.classifier[:-1](self.features(x))`` up to the convolutions'
        summation order, computed faster on the CPU (``benchmarks/bench_trainer.py``, its
        "layout" table): the convolutions run in
        channels-last layout, where a 2x2 max-pool is about ten times faster than on an NCHW
        tensor, and each block pools before its ReLU. Both orders give the same values and the
        same gradients (ReLU is monotonic, so it commutes with a max), and the ReLU then touches
        a quarter of the elements.
        """
        h = x
        for i in range(0, len(self.features), 3):  # (Conv2d, ReLU, MaxPool2d) per block
            conv = self.features[i]
            # A 1-channel input is NCHW and channels-last at once, so the layout comes from the
            # weight: a per-call copy of a few kB (``contiguous`` would keep a 1-channel weight's
            # NCHW strides); the parameter itself stays NCHW.
            w = torch.empty_like(conv.weight, memory_format=torch.channels_last).copy_(conv.weight)
            h = F.conv2d(h, w, conv.bias, conv.stride, conv.padding)
            h = F.relu(F.max_pool2d(h, 2))
        return self.classifier[:-1](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)`` for normalised float images ``(N, C, H, W)``."""
        return self.classifier[-1](self.hidden(x))


def build_model(
    cfg: TrainConfig, in_channels: int, n_classes: int, image_size: int | tuple[int, int]
) -> nn.Module:
    """The classifier that ``cfg`` describes: ``cfg.arch`` sized by ``cfg.widths`` / ``cfg.fc``.

    ``simple``: :class:`SimpleCNN` (one conv block per width); ``resnet``:
    :class:`~ratio_search.train.resnet.ResNet` (one residual stage per width).
    """
    if cfg.arch == "simple":
        return SimpleCNN(in_channels, n_classes, image_size, tuple(cfg.widths), int(cfg.fc))
    if cfg.arch == "resnet":
        from .resnet import ResNet

        return ResNet(in_channels, n_classes, image_size, tuple(cfg.widths), int(cfg.fc))
    raise ConfigError(f"train.arch: {cfg.arch!r} is not implemented; allowed: simple, resnet")
