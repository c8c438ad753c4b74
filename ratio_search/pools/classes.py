"""Which classes receive synthetic images: ``train.synthetic_classes`` resolved against a dataset.

Pools are per class (the class is part of the pool key), so the pool builder needs the same
answer as the mixing; it lives here, below both (``ratio_search.train.mixing`` re-exports it).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError


def synthetic_labels(
    spec: str | Sequence[str], class_names: Sequence[str], default_label: int
) -> list[int]:
    """The labels that receive synthetic images, in label order (``TrainConfig.synthetic_classes``).

    ``"default"`` -> ``[default_label]`` (the dataset's synthetic class); ``"all"`` -> every label;
    ``"A,B"`` (or a list of names) -> those classes' labels. An unknown name is a ConfigError.
    """
    names = list(class_names)
    text = ",".join(str(s) for s in spec) if not isinstance(spec, str) else spec
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts == ["default"]:
        return [int(default_label)]
    if parts == ["all"]:
        return list(range(len(names)))
    if not parts:
        raise ConfigError("train.synthetic_classes: empty; use default, all or class names")
    unknown = [p for p in parts if p not in names]
    if unknown:
        raise ConfigError(
            f"train.synthetic_classes: {', '.join(repr(u) for u in unknown)} is not a class of the "
            f"data (classes: {', '.join(names)}; or default, all)"
        )
    return sorted({names.index(p) for p in parts})
