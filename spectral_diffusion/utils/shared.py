"""Holding a module without making it part of another module."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SharedRef(Generic[T]):
    """A reference that ``nn.Module`` does not register and that deep copies share.

    Frozen parts of a training run (the teacher, a pretrained autoencoder) are held this way: they
    stay out of ``state_dict``, ``parameters()`` and hence the optimizer and checkpoints, and the EMA
    callback's deep copy of the LightningModule reuses them instead of duplicating their memory.
    """

    def __init__(self, obj: T) -> None:
        self.obj = obj

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedRef[T]:
        return self

    def __repr__(self) -> str:
        return f"SharedRef({type(self.obj).__name__})"
