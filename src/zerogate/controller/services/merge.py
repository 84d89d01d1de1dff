"""A partial update merged onto the stored object, validated again as a whole.

A PATCH's fields are valid one by one, but together with what is stored they
may not be (a port range turned upside down, a virtual IP outside the new
subnets). The whole is validated with the create model; a failure is an
Unprocessable naming each field (or the object kind) and why.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from zerogate.controller.state import Unprocessable

M = TypeVar("M", bound=BaseModel)


def merged(model: type[M], object_type: str, **values: Any) -> M:
    """``model`` built from ``values``; Unprocessable when they do not fit together."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise Unprocessable(
            "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or object_type}: {e['msg']}" for e in exc.errors()
            )
        ) from exc
