"""Diffusion generators: fine-tune once (:func:`finetune`), load (:func:`load_model`), sample.

Backends: ``tiny`` (a class-conditional UNet2DModel for CPUs, starting from the bundled base
model) and ``stable-diffusion`` (a local diffusers pipeline, imported lazily).
"""

from .common import GenerativeModel, ModelInfo, finetune, list_models, load_model

__all__ = ["GenerativeModel", "ModelInfo", "finetune", "list_models", "load_model"]
