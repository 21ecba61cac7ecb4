"""Images: OCI image layouts and ``docker save`` archives imported offline into a local,
content-addressed store of read-only root filesystems (below ``sandbox/``, above ``lxc/``).

    oci       read a source down to its verified manifest, config and layer list
    unpack    apply layers to a directory, every layer treated as hostile
    store     the store: records, locking, shifted copies, users, removal
    config    the image config's command defaults (Env, WorkingDir, User, Entrypoint, Cmd)
    load      ``import_image``
    snapshot  snapshots of a running sandbox: a captured writable layer on a base, in the store
    layercopy copy an overlay layer with its owners remapped (capture and shifted copies)

The public API: ``import_image(ref)``, ``list_images()``, ``get_image(id_or_ref)``,
``remove_image(id_or_ref)``, ``prune()`` and the ``Image`` and ``ImageConfig`` records.
"""

from __future__ import annotations

from lxcbind.image.config import ImageConfig
from lxcbind.image.load import import_image, resolve_image
from lxcbind.image.store import Image, list_images, prune
from lxcbind.image.store import lookup as get_image
from lxcbind.image.store import remove as remove_image

__all__ = ["Image", "ImageConfig", "get_image", "import_image", "list_images", "prune",
           "remove_image", "resolve_image"]
