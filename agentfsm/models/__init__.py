"""Model clients. (The OpenAI-compatible client is being built; until then, model names do
not resolve and agents need a model object.)"""

from __future__ import annotations

from .._errors import ConfigurationError
from .._model import ModelProvider

__all__ = ["default_provider"]


def default_provider() -> ModelProvider:
    raise ConfigurationError("model names cannot be resolved yet; give the agent a model object")
