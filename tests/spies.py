"""Watching and steering calls of a class's method in a test, without restating its signature."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def before_each_call(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str, hook: Callable[..., Any]
) -> None:
    """Run ``hook(self, *args, **kwargs)`` before every call of ``owner.name``; the method
    then runs as usual (a hook that raises makes the call raise)."""
    original = getattr(owner, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        hook(self, *args, **kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
