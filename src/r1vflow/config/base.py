"""What every config section shares: strict validation and the names of model parts.

Rules every field of every section follows (docs/reliability.md, "Config values"):
- unknown keys are errors;
- floats are finite (`inf`/`nan` are refused: they compiled to null);
- an integer field without an upper bound of its own is at most MAX_INT (no run needs more, and
  torch/numpy take no more); seeds are 0..MAX_SEED (`Seed`);
- no string, nor any string inside a list or mapping, carries a credential (a URI's
  user:password@, or a query parameter such as ?password= or ?access_token=): credentials come
  from Secrets and environment variables, never from the config, which is compiled into the IR.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from annotated_types import Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from r1vflow.config.redaction import credential_in

Part = Literal["vision", "projector", "llm"]
MAX_INT = 2**31 - 1
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="Random seed, 0..2**32-1.")]


def _credential(value: Any) -> str | None:
    if isinstance(value, str):
        return credential_in(value)
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list | tuple):
        return next((found for v in value if (found := _credential(v))), None)
    return None


def _too_large(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) > MAX_INT
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, list | tuple) and any(_too_large(v) for v in value)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              hide_input_in_errors=True)
    # field -> where its credentials belong instead (said when a value carrying one is refused)
    credential_hints: ClassVar[dict[str, str]] = {}

    @field_validator("*", mode="after")
    @classmethod
    def _plain_values(cls, value: Any, info: ValidationInfo) -> Any:
        found = _credential(value)
        if found:
            hint = cls.credential_hints.get(info.field_name or "", "give them through a "
                                            "Secret or an environment variable")
            raise ValueError(f"must not contain credentials ({found}): the config is compiled "
                             f"into the pipeline and shown in logs; {hint}")
        field = cls.model_fields.get(info.field_name or "")
        bounded = field is not None and any(isinstance(m, Le | Lt) for m in field.metadata)
        if not bounded and _too_large(value):
            raise ValueError(f"integers here are at most {MAX_INT} (no real run needs more)")
        return value
