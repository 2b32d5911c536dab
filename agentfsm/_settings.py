"""Model settings: the sampling and request options a model is asked with.

A model object carries default settings (``OpenAIChatModel(..., settings=...)``); an agent
carries its own (``Agent(model_settings=...)``), which override the model's, option by option,
for that agent's turns only. So two agents can share one model with different settings.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ._errors import ConfigurationError
from ._json import check_json_data

__all__ = ["REASONING_EFFORTS", "ModelSettings"]

#: The reasoning efforts the OpenAI APIs define (others go through ``extra_body``).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")

#: The choices that leave the model free (the others force a tool call).
FREE_CHOICES = (None, "auto", "none")


class ModelSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Sampling and request options. None (the default) leaves an option to the model's own
    settings, and then to the server.

    ``temperature`` is from 0 to 2, ``top_p`` from 0 to 1. ``max_tokens`` (or its other
    name, ``max_output_tokens``: set one) limits the answer; it is sent as
    ``max_completion_tokens`` (Chat Completions) or ``max_output_tokens`` (Responses).
    ``tool_choice`` is ``"auto"``, ``"required"``, ``"none"`` or the name of one tool.
    ``parallel_tool_calls`` lets the model make several calls in one turn.
    ``reasoning_effort`` is for reasoning models (one of ``REASONING_EFFORTS``). ``seed``
    and ``stop`` exist only in Chat Completions. ``store`` asks the server to keep the
    responses, and with the Responses API continues the conversation on the server
    (``previous_response_id``; see docs/agents.md). ``extra_body`` is merged into the
    request body last (so it can override anything); ``extra_headers`` are sent with every
    request.

    Raises ConfigurationError, naming the option, for a value of the wrong type or range.
    """

    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    parallel_tool_calls: bool | None = None
    tool_choice: str | None = None
    reasoning_effort: str | None = None
    store: bool | None = None
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)
    extra_headers: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        _number("temperature", self.temperature, 0.0, 2.0)
        _number("top_p", self.top_p, 0.0, 1.0)
        for name in ("max_output_tokens", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ConfigurationError(
                    f"ModelSettings.{name} must be an int of at least 1, not {value!r}"
                )
        if (
            self.max_output_tokens is not None
            and self.max_tokens is not None
            and self.max_output_tokens != self.max_tokens
        ):
            raise ConfigurationError(
                "ModelSettings.max_tokens and max_output_tokens are one option by two names; "
                f"set one (got {self.max_tokens} and {self.max_output_tokens})"
            )
        if self.seed is not None and type(self.seed) is not int:
            raise ConfigurationError(f"ModelSettings.seed must be an int, not {self.seed!r}")
        if self.stop is not None and (
            isinstance(self.stop, str)
            or not isinstance(self.stop, tuple | list)
            or not all(isinstance(s, str) for s in self.stop)
        ):
            raise ConfigurationError(
                f"ModelSettings.stop must be a tuple of str, not {self.stop!r}"
            )
        for name in ("parallel_tool_calls", "store"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigurationError(f"ModelSettings.{name} must be a bool, not {value!r}")
        if self.tool_choice is not None and (
            not isinstance(self.tool_choice, str) or not self.tool_choice
        ):
            raise ConfigurationError(
                "ModelSettings.tool_choice must be 'auto', 'required', 'none' or a tool's "
                f"name, not {self.tool_choice!r}"
            )
        if self.reasoning_effort is not None and self.reasoning_effort not in REASONING_EFFORTS:
            raise ConfigurationError(
                f"ModelSettings.reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}, "
                f"not {self.reasoning_effort!r} (send others through extra_body)"
            )
        if not isinstance(self.extra_body, dict):
            raise ConfigurationError(
                f"ModelSettings.extra_body must be a dict, not {type(self.extra_body).__name__}"
            )
        check_json_data(self.extra_body, "ModelSettings.extra_body", ConfigurationError)
        if not isinstance(self.extra_headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.extra_headers.items()
        ):
            raise ConfigurationError("ModelSettings.extra_headers must map str to str")

    @property
    def output_limit(self) -> int | None:
        """The answer's token limit, by either of its names."""
        return self.max_output_tokens if self.max_output_tokens is not None else self.max_tokens

    @property
    def forces_tool(self) -> bool:
        """Whether ``tool_choice`` forces a tool call (``"required"`` or a tool's name)."""
        return self.tool_choice not in FREE_CHOICES

    def over(self, base: ModelSettings | None) -> ModelSettings:
        """These settings, with ``base``'s for the options these leave unset."""
        if base is None:
            return self
        values: dict[str, Any] = {}
        for name in self.__struct_fields__:
            mine, theirs = getattr(self, name), getattr(base, name)
            if isinstance(mine, dict):
                values[name] = {**theirs, **mine}
            else:
                values[name] = theirs if mine is None else mine
        if self.output_limit is not None:
            # One option by two names: the one set here replaces the base's, by either name.
            values["max_output_tokens"], values["max_tokens"] = self.output_limit, None
        return ModelSettings(**values)


def _number(name: str, value: Any, low: float, high: float) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ConfigurationError(
            f"ModelSettings.{name} must be a number from {low:g} to {high:g}, not {value!r}"
        )
