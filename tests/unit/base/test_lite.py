"""The import-time-cheap record and regex stand-ins behave like the dataclasses they replace."""

from __future__ import annotations

import copy
import pickle

import pytest

from lxcbind._lite import as_dict, factory, lazy_re, record, replace


@record
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()

    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


@record(frozen=False, uncompared=("note",))
class Box:
    name: str
    items: list[str] = factory(list)
    note: str = ""


def test_init_defaults_and_errors() -> None:
    assert (Point(1).x, Point(1).y, Point(1, 2).y, Point(x=3, y=4).norm1()) == (1, 0, 2, 7)
    for bad in (lambda: Point(), lambda: Point(1, 2, (), 4), lambda: Point(1, x=2),
                lambda: Point(1, z=3)):
        with pytest.raises(TypeError):
            bad()


def test_frozen_slots_eq_hash_repr() -> None:
    p = Point(1, 2)
    with pytest.raises(AttributeError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.x
    with pytest.raises(AttributeError):
        p.z = 1  # type: ignore[attr-defined]
    assert p.x == 1 and not hasattr(p, "__dict__")
    assert p == Point(1, 2) and p != Point(2, 1) and hash(p) == hash(Point(1, 2))
    assert repr(p) == "Point(x=1, y=2, tags=())"
    assert replace(p, y=9) == Point(1, 9) and p.y == 2
    assert as_dict(p) == {"x": 1, "y": 2, "tags": ()}
    assert pickle.loads(pickle.dumps(p)) == p and copy.deepcopy(p) == p


def test_mutable_factory_uncompared() -> None:
    a, b = Box("a"), Box("a", note="other")
    a.items.append("x")
    assert b.items == [] and a.items is not b.items     # a fresh default per instance
    b.items.append("x")
    assert a == b                                       # note is not compared
    with pytest.raises(TypeError):
        hash(a)                                         # mutable: unhashable


@record
class Point3(Point):
    z: int = 0


def test_subclass_adds_fields_after_the_parents() -> None:
    p = Point3(1, 2, (), 3)
    assert (p.x, p.y, p.z, p.norm1()) == (1, 2, 3, 3) and Point3(1, z=5).y == 0
    assert p == Point3(1, 2, (), 3) and p != Point3(1, 2, (), 4) and isinstance(p, Point)
    assert repr(p) == "Point3(x=1, y=2, tags=(), z=3)" and pickle.loads(pickle.dumps(p)) == p
    with pytest.raises(AttributeError):
        p.z = 1  # type: ignore[misc]


def test_lazy_re_compiles_on_first_use() -> None:
    pat = lazy_re(r"[a-z]+")
    assert pat._compiled is None
    assert pat.fullmatch("abc") and not pat.fullmatch("ab1") and pat.pattern == "[a-z]+"
