"""What every config section shares: strict validation and the names of model parts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Part = Literal["vision", "projector", "llm"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
