"""The second classifier of a trial (``train.arch: resnet``): a small residual network.

The study's CNN is the weakest reader of synthetic images one could pick; this is a small ResNet
(He et al. 2016, the CIFAR variant: 3x3 stem, no max-pool) written with ``torch.nn`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError


def _norm(channels: int) -> nn.BatchNorm2d:
    """The normalisation after every conv: BatchNorm, its running statistics at momentum 0.5.

    GroupNorm (per image, no running statistics) was tried first and did not learn the phantom
    at all at the quick budget (16 epochs, batch 32, lr 2e-3: train loss stuck at ln 2, val
    accuracy 0.5). BatchNorm at torch's momentum 0.1 learns, but a trial has few steps per epoch
    (7 at 200 images) and its running statistics lag the fast-moving weights: val accuracy swung
    by up to 0.35 between epochs and ended at 0.70 / 0.78 for seeds 0 / 2; at momentum 0.5 the
    same seeds end at 0.86 / 0.84. The statistics are buffers of the state dict, so resume and
    ``train --config`` carry them; the trainer evaluates in ``eval()`` mode (``loop._logits``),
    so validation never updates them; on the CPU it is deterministic. Seeds trained together run
    as separate modules (``multi.py``), so no statistic is shared between seeds.
    """
    return nn.BatchNorm2d(channels, momentum=0.5)


class BasicBlock(nn.Module):
    """Two 3x3 conv + norm layers with an identity shortcut (1x1 conv + norm when the shape
    changes); ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _norm(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: 3x3 stem, one stage per width, global average pool, FC + ReLU, FC.

    Stage ``i`` has ``blocks`` :class:`BasicBlock` of ``widths[i]`` channels; every stage after
    the first halves the resolution (stride 2, rounding up); the pool is global, so the size is
    the same at any image size. The last stage must keep at least two pixels (BatchNorm cannot
    normalise one value per channel, e.g. a last batch of one image): 3 px for 2 stages, 5 px
    for 3.
    The head mirrors :class:`~ratio_search.train.cnn.SimpleCNN`'s (``fc`` hidden units), so that
    ``train.widths`` / ``train.fc`` size both classifiers.

    Size (1 channel, 2 classes; the pool makes it independent of the image size): the study's
    widths 16/32/64 with ``fc=128`` and 2 blocks per stage is **182,898 parameters**, 1.2 times
    :class:`SimpleCNN`'s 154,754 at 32 px, and about ten times its multiply-adds per image
    (every conv works at full channel width; the CNN's three convs are cheap and its weight is
    mostly the first FC layer).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        image_size: int | tuple[int, int] = 32,
        widths: Sequence[int] = (16, 32, 64),
        fc: int = 128,
        blocks: int = 2,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        for _ in widths[1:]:
            h, w = (h + 1) // 2, (w + 1) // 2  # a 3x3 conv, stride 2, padding 1
        if h * w < 2:
            raise ConfigError(
                f"image size {image_size} is too small for {len(widths)} residual stages "
                f"(needs at least {2 ** (len(widths) - 1) + 1} px)"
            )
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            _norm(widths[0]),
            nn.ReLU(),
        ]
        c = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(c, width, stride=2 if i > 0 and j == 0 else 1))
                c = width
        layers += [nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c, fc), nn.ReLU(), nn.Linear(fc, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)`` for normalised float images ``(N, C, H, W)``."""
        return self.classifier(self.features(x))


__all__ = ["BasicBlock", "ResNet"]
