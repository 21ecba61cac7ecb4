"""Fixtures for the image tests: a scratch directory for sources and a store that forgets
every image a test imported (removed in teardown, even when the test fails)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

import pytest

from lxcbind.image import store


class Imported:
    """Import through this to have the image removed after the test."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, ref: str, **kw: object) -> store.Image:
        from lxcbind.image import import_image

        image = import_image(ref, **kw)  # type: ignore[arg-type]
        self.ids.append(image.id)
        return image

    def forget(self, image_id: str) -> None:
        self.ids.append(image_id)


@pytest.fixture
def imported() -> Iterator[Imported]:
    keep = Imported()
    yield keep
    for image_id in reversed(keep.ids):
        with contextlib.suppress(Exception):
            store.remove(image_id)


def store_leftovers() -> list[str]:
    """Half-built images in the store that no builder is working on (there must never be
    any after an import returns; other runs on this machine may be building right now, and
    hold the image's lock while they do)."""
    try:
        entries = [e for e in os.listdir(store.IMAGES_ROOT) if e.startswith(".build-")]
    except FileNotFoundError:
        return []
    left = []
    for entry in entries:
        rest = entry[len(".build-"):]
        dirname = rest.split("@")[0] if "@" in rest else rest.rsplit("-", 1)[0]
        try:
            fd = os.open(os.path.join(store.IMAGES_ROOT, f".{dirname}.lock"), os.O_RDONLY)
        except FileNotFoundError:
            left.append(entry)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue   # being built
        finally:
            os.close(fd)
        if os.path.lexists(os.path.join(store.IMAGES_ROOT, entry)):
            left.append(entry)
    return left
