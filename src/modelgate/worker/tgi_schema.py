"""TGI's request bodies (``../shared/specs/tgi-openapi.json``), validated at the edge."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelgate.engine.sampling import SamplingConfig

__all__ = ["CompatGenerateRequest", "GenerateParameters", "GenerateRequest", "ValidationError"]


class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    best_of: int | None = Field(None, gt=0)
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = None
    max_new_tokens: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    return_full_text: bool | None = None
    seed: int | None = Field(None, ge=0)
    stop: list[str] = Field(default_factory=list, max_length=4)
    temperature: float | None = Field(None, gt=0)
    top_k: int | None = Field(None, gt=0)
    top_n_tokens: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    truncate: int | None = Field(None, ge=0)
    typical_p: float | None = Field(None, gt=0, le=1)
    watermark: bool = False
    grammar: dict[str, object] | None = None
    adapter_id: str | None = None

    @property
    def sampling(self) -> SamplingConfig:
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
            seed=self.seed,
        )

    def unsupported(self) -> str | None:
        checks = (
            ("best_of", (self.best_of or 1) > 1),
            ("top_n_tokens", bool(self.top_n_tokens)),
            ("typical_p", self.typical_p is not None and self.typical_p < 1.0),
            ("watermark", self.watermark),
            ("adapter_id", bool(self.adapter_id)),
            ("frequency_penalty", bool(self.frequency_penalty)),
        )
        return next((name for name, bad in checks if bad), None)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str = Field(min_length=1)
    parameters: GenerateParameters = Field(default_factory=lambda: GenerateParameters.model_validate({}))


class CompatGenerateRequest(GenerateRequest):
    stream: bool = False
