"""A small name -> object registry, one per kind (activations, models, attacks, datasets, ...).

Every entry registers itself with a decorator where it is defined, as timm does::

    @MODELS.register("resnet18")
    class ResNet18(nn.Module): ...

    @ATTACKS.register()           # the name comes from the class's ``name`` attribute
    class PGD(Attack): ...

    @DATASETS.register_built("mnist")   # registers what the function returns
    def mnist_spec() -> DatasetSpec: ...

The package's ``__init__`` imports the modules holding the entries, so importing the package
registers all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from robustact.errors import UnknownNameError

T = TypeVar("T")


def canonical_name(name: str, separator: str = "_") -> str:
    """Lower-case a name and treat '-' and '_' alike: 'Fashion-MNIST' -> 'fashion_mnist'
    (``separator="-"``: 'autoattack_rand' -> 'autoattack-rand')."""
    other = "-" if separator == "_" else "_"
    return name.strip().lower().replace(other, separator)


class Registry(Generic[T]):
    """Maps lower-case names to objects; an unknown name raises an error listing the valid ones.

    ``separator``: the character names are spelled with ('_' or '-'); the other one is read as
    it (``Registry("suite", separator="-")`` keeps 'autoattack-rand').
    """

    def __init__(self, kind: str, *, separator: str = "_") -> None:
        if separator not in ("_", "-"):
            raise ValueError(f"separator must be '_' or '-', got {separator!r}")
        self.kind = kind
        self.separator = separator
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> T:
        key = self._canonical(name)
        if key in self._entries:
            raise ValueError(f"{self.kind} {key!r} is already registered")
        self._entries[key] = obj
        for alias in aliases:
            self._aliases[self._canonical(alias)] = key
        return obj

    def register(self, name: str | None = None, *,
                 aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of :meth:`add`, above the class or function that defines the entry.

        ``name`` None takes the object's ``name`` attribute (attack classes carry one)."""

        def decorator(obj: T) -> T:
            return self.add(_entry_name(self.kind, name, obj), obj, aliases=aliases)

        return decorator

    def register_built(self, name: str, *, aliases: tuple[str, ...] = (),
                       ) -> Callable[[Callable[[], T]], Callable[[], T]]:
        """Decorator for a function that builds an entry: registers ``build()`` under ``name``
        and returns the function unchanged (a dataset's spec, say)."""

        def decorator(build: Callable[[], T]) -> Callable[[], T]:
            self.add(name, build(), aliases=aliases)
            return build

        return decorator

    def resolve(self, name: str) -> str:
        """The registered name for ``name`` (aliases and spelling variants accepted)."""
        if not isinstance(name, str):
            raise UnknownNameError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = self._canonical(name)
        key = self._aliases.get(key, key)
        if key not in self._entries:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
            )
        return key

    def get(self, name: str) -> T:
        return self._entries[self.resolve(name)]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = self._canonical(name)
        return self._aliases.get(key, key) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def _canonical(self, name: str) -> str:
        return canonical_name(name, self.separator)


def _entry_name(kind: str, name: str | None, obj: object) -> str:
    """``name``, else the object's ``name`` attribute."""
    if name is not None:
        return name
    own = getattr(obj, "name", None)
    if not isinstance(own, str):
        raise TypeError(f"{kind} {obj!r} has no name attribute; register it with a name")
    return own
