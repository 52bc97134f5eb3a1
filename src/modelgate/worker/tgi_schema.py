"""TGI's request bodies (``../shared/specs/tgi-openapi.json``), validated at the edge.

The bounds are TGI's own (its spec, and its router's validation where that is
stricter: ``max_new_tokens`` > 0, ``frequency_penalty`` in [-2, 2], ``top_n_tokens``
at most 5), plus the values no sampler can use (a temperature below
``MIN_TEMPERATURE``, a repetition penalty outside its range).  Anything out of
bounds is a 422 ``validation`` error, as from TGI.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelgate.engine.sampling import SamplingConfig
from modelgate.wire.openai import MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY, check_temperature

MAX_TOP_N_TOKENS = 5  # TGI's default --max-top-n-tokens
MAX_SEED = 2**64 - 1  # TGI's seed is a u64

__all__ = ["CompatGenerateRequest", "GenerateParameters", "GenerateRequest", "ValidationError"]


class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    best_of: int | None = Field(None, gt=0)
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    max_new_tokens: int | None = Field(None, gt=0)
    repetition_penalty: float | None = Field(None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    return_full_text: bool | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: list[str] = Field(default_factory=list, max_length=4)
    temperature: float | None = Field(None, gt=0)
    top_k: int | None = Field(None, gt=0)
    top_n_tokens: int | None = Field(None, ge=0, le=MAX_TOP_N_TOKENS)
    top_p: float | None = Field(None, gt=0, le=1)
    truncate: int | None = Field(None, ge=0)
    typical_p: float | None = Field(None, gt=0, le=1)
    watermark: bool = False
    grammar: dict[str, object] | None = None
    adapter_id: str | None = None

    _temperature = field_validator("temperature")(check_temperature)

    def sampling_config(self, *, logprobs: bool) -> SamplingConfig:
        """TGI samples when asked to, or when any sampling knob moves off its neutral value."""
        sample = (
            self.do_sample
            or (self.temperature is not None and self.temperature != 1.0)
            or bool(self.top_k)
            or (self.top_p is not None and self.top_p < 1.0)
        )
        return SamplingConfig(
            temperature=(self.temperature or 1.0) if sample else 0.0,
            top_p=self.top_p or 1.0,
            top_k=self.top_k or 0,
            repetition_penalty=self.repetition_penalty or 1.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            seed=self.seed,
            logprobs=logprobs or bool(self.top_n_tokens),
            top_logprobs=self.top_n_tokens or 0,
        )

    def unsupported(self) -> str | None:
        checks = (
            ("best_of", (self.best_of or 1) > 1),
            ("typical_p", self.typical_p is not None and self.typical_p < 1.0),
            ("watermark", self.watermark),
            ("adapter_id", bool(self.adapter_id)),
        )
        return next((name for name, bad in checks if bad), None)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str = Field(min_length=1)
    parameters: GenerateParameters = Field(default_factory=lambda: GenerateParameters.model_validate({}))


class CompatGenerateRequest(GenerateRequest):
    stream: bool = False
