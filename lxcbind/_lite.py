"""Import-time-cheap stand-ins for ``@dataclass`` and ``re.compile``.

Every one-shot ``python -m lxcbind run`` pays for the modules it imports, so the run path does
no work at import that it can do later or not at all:

* ``@record`` makes a value class with ``__slots__``, an ``__init__`` taking the annotated
  fields in order (class attributes are the defaults), ``__repr__``, ``__eq__`` and, when
  frozen, ``__hash__``.  ``@dataclass`` generates and ``exec``\\s the source of those methods
  for each class (about 0.5 ms a class, 17 classes in ``policy`` alone); here they are shared
  methods that walk ``_fields``.  Frozen records refuse ``setattr``/``delattr`` with an
  ``AttributeError``; ``replace()`` makes a changed copy.
* ``lazy_re(pattern)`` compiles on first use, so a module's validation regexes cost nothing
  until a value is checked.
* ``sha256_hex(data)`` is ``hashlib.sha256(data).hexdigest()`` without importing ``hashlib``,
  which loads OpenSSL's module (~2 ms) for a run's few short digests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def factory(default_factory: Callable[[], T]) -> T:
    """A default made fresh for each instance (``dataclasses.field(default_factory=...)``):
    ``created: list[str] = factory(default_factory=list)``.  Typed as the value it stands for,
    and its parameter named as dataclasses', so that type checkers (PEP 681) see a default."""
    return _Factory(default_factory)  # type: ignore[return-value]


class _Record:
    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _defaults: dict[str, Any] = {}
    _compared: tuple[str, ...] = ()
    _frozen = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments, "
                            f"got {len(args)}")
        put = object.__setattr__
        for name, value in zip(fields, args, strict=False):  # the rest: keywords, defaults
            if name in kwargs:
                raise TypeError(f"{type(self).__name__}() got multiple values for {name!r}")
            put(self, name, value)
        for name in fields[len(args):]:
            if name in kwargs:
                value = kwargs.pop(name)
            else:
                try:
                    value = self._defaults[name]
                except KeyError:
                    raise TypeError(f"{type(self).__name__}() missing argument {name!r}") \
                        from None
                if type(value) is _Factory:
                    value = value.make()
            put(self, name, value)
        if len(kwargs) > len(fields) - len(args) or any(k not in fields for k in kwargs):
            raise TypeError(f"{type(self).__name__}() got unexpected arguments "
                            f"{sorted(k for k in kwargs if k not in fields)}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__qualname__}({inner})"

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._compared)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __reduce__(self) -> tuple[Any, ...]:   # pickle/copy without going through setattr
        return (_rebuild, (type(self), tuple(getattr(self, n) for n in self._fields)))


def _rebuild(cls: type[T], values: tuple[Any, ...]) -> T:
    obj = cls.__new__(cls)
    for name, value in zip(cls._fields, values, strict=True):  # type: ignore[attr-defined]
        object.__setattr__(obj, name, value)
    return obj


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")


def _frozen_delattr(self: Any, name: str) -> None:
    raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")


def _frozen_hash(self: Any) -> int:
    return hash(self._key())


@overload
def record(cls: type[T], /) -> type[T]: ...
@overload
def record(*, frozen: bool = True,
           uncompared: tuple[str, ...] = ()) -> Callable[[type[T]], type[T]]: ...


# PEP 681: type checkers treat a @record class as a dataclass (its __init__, frozenness).
@dataclass_transform(frozen_default=True, field_specifiers=(factory,))
def record(cls: type[T] | None = None, *, frozen: bool = True,
           uncompared: tuple[str, ...] = ()) -> Any:
    """Class decorator: see the module docstring.  ``uncompared`` names fields left out of
    ``==`` and ``hash`` (``field(compare=False)``)."""

    def build(cls: type[T]) -> type[T]:
        own = tuple(cls.__dict__.get("__annotations__", {}))
        # A record subclassing a record adds its fields after the parent's (as dataclasses).
        parent = issubclass(cls, _Record)
        inherited: tuple[str, ...] = cls._fields if parent else ()  # type: ignore[attr-defined]
        fields = inherited + own
        ns = {k: v for k, v in cls.__dict__.items()
              if k not in own and k not in ("__dict__", "__weakref__")}
        defaults = dict(cls._defaults) if parent else {}  # type: ignore[attr-defined]
        defaults.update({k: cls.__dict__[k] for k in own if k in cls.__dict__})
        compared = cls._compared if parent else ()  # type: ignore[attr-defined]
        ns.update(__slots__=own, _fields=fields, _frozen=frozen, _defaults=defaults,
                  _compared=compared + tuple(k for k in own if k not in uncompared))
        if frozen:
            ns.update(__setattr__=_frozen_setattr, __delattr__=_frozen_delattr,
                      __hash__=_frozen_hash)
        else:
            ns["__hash__"] = None     # mutable and comparable: unhashable, as a dataclass
        bases = cls.__bases__ if parent else \
            tuple(b for b in cls.__bases__ if b is not object) + (_Record,)
        return type(cls.__name__, bases, ns)

    return build if cls is None else build(cls)


def replace(obj: T, **changes: Any) -> T:
    """A copy of record ``obj`` with ``changes`` (``dataclasses.replace``)."""
    values = {name: getattr(obj, name) for name in obj._fields}  # type: ignore[attr-defined]
    values.update(changes)
    return type(obj)(**values)


def as_dict(obj: Any) -> dict[str, Any]:
    """A record's fields as a dict (shallow; ``dataclasses.asdict`` for flat records)."""
    return {name: getattr(obj, name) for name in obj._fields}


class lazy_re:  # noqa: N801 - used like ``re.compile``
    """``re.compile(pattern, flags)``, deferred to the first match."""

    __slots__ = ("_args", "_compiled")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self._args = (pattern, flags)
        self._compiled: Any = None
        _LAZY.append(self)

    def __getattr__(self, name: str) -> Any:   # match, fullmatch, search, sub, pattern ...
        if self._compiled is None:
            import re

            self._compiled = re.compile(*self._args)
        return getattr(self._compiled, name)


_LAZY: list[lazy_re] = []


def compile_all() -> None:
    """Compile every ``lazy_re`` made so far: for a process that forks a copy of itself per
    run (``lxcbind.cliserver``), so that no copy compiles them again."""
    for pattern in _LAZY:
        pattern.pattern   # noqa: B018 - the attribute access compiles it


_sha256: Callable[[bytes], Any] | None = None


def sha256_hex(data: bytes) -> str:
    """``hashlib.sha256(data).hexdigest()``, from CPython's built-in implementation when it is
    there (``_sha2`` from 3.12, ``_sha256`` before), else from ``hashlib``."""
    global _sha256
    if _sha256 is None:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found]  # CPython >= 3.12
        except ImportError:
            try:
                from _sha256 import sha256  # type: ignore[import-not-found]  # CPython < 3.12
            except ImportError:
                from hashlib import sha256
        _sha256 = sha256
    digest: str = _sha256(data).hexdigest()
    return digest
