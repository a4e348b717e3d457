"""Describe a pydantic validation error without quoting the input (it may be PHI)."""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["describe_validation_error"]


def describe_validation_error(exc: ValidationError, root: str = "payload") -> str:
    """``loc: message`` for every error, joined with '; '; never the offending values."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or root}: {error['msg']}"
        for error in exc.errors(include_input=False)
    )
