"""The policy registry: one name per compared system.

It imports no policy: each policy module registers its classes with ``@register(name)`` when it is
imported, and the package ``dyno.policy`` imports them all, so the registry is full whenever
``dyno.policy`` is.

    dyno.policy.names()                       # ['cloud-only', 'cloud-only-raw', 'device-only', 'dyno', ...]
    dyno.policy.make("dyno", margin=0.05)     # a fresh Policy; unknown names fail listing the known ones
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeVar

from dyno.errors import PolicyError

if TYPE_CHECKING:
    from dyno.policy.base import Policy

__all__ = ["register", "make", "names"]

_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound="type[Policy]")


def register(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register("dyno")`` makes ``make("dyno")`` build that class."""

    def add(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise PolicyError(f"policy name {name!r} is already registered to {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return add


def names() -> list[str]:
    """Every registered policy name, sorted."""
    return sorted(_REGISTRY)


def make(name: str, **kwargs: Any) -> "Policy":
    """A new policy instance by registered name; keyword arguments go to its constructor."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    try:
        policy: Policy = cls(**kwargs)
    except TypeError as error:
        raise PolicyError(f"policy {name!r}: bad arguments {sorted(kwargs)}: {error}") from error
    return policy
