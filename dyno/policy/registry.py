"""The policy registry: one name per compared system.

    dyno.policy.names()                       # ['cloud-only', 'cloud-only-raw', 'device-only', 'dyno', ...]
    dyno.policy.make("dyno", margin=0.05)     # a fresh Policy; unknown names fail listing the known ones
"""

from __future__ import annotations

from typing import Callable, TypeVar

from dyno.errors import PolicyError

__all__ = ["register", "make", "names"]

_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register("dyno")`` makes ``make("dyno")`` build that class."""

    def add(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise PolicyError(f"policy name {name!r} is already registered to {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return add


def _load() -> None:
    import dyno.policy.baselines  # noqa: F401  (registers on import)
    import dyno.policy.dyno_policy  # noqa: F401


def names() -> list[str]:
    """Every registered policy name, sorted."""
    _load()
    return sorted(_REGISTRY)


def make(name: str, **kwargs):
    """A new policy instance by registered name; keyword arguments go to its constructor."""
    _load()
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise PolicyError(f"policy {name!r}: bad arguments {sorted(kwargs)}: {error}") from error
