"""The `objective:` section of an unlearning spec: plain pydantic, which the run spec validates
without importing the app."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Options(BaseModel):
    """The `objective:` section of an unlearning spec."""

    model_config = ConfigDict(extra="forbid")

    layer: int = Field(7, ge=0, description="decoder layer L whose output activations RMU steers (paper: 7)")
    steering_coeff: float = Field(
        300.0,
        gt=0,
        description=(
            "norm c of the control vector. It must exceed the layer's natural activation norm: zephyr-7b's "
            "layer 7 is small (paper: c=6.5), SmolLM2-135M's layer-5 tokens have norms near 100, so the "
            "default is 300 for small models; scale it with your model's activation norms"
        ),
    )
    control_seed: int = Field(0, description="seed of the random control directions u")
