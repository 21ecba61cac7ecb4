"""``import_image``: a source reference in, a stored ``Image`` out (built once)."""

from __future__ import annotations

from lxcbind.errors import ImageError
from lxcbind.image import oci, store
from lxcbind.image.config import from_oci
from lxcbind.image.unpack import Budget, Tree


def import_image(ref: str, *, max_size: int | None = None) -> store.Image:
    """The image ``ref`` names (``oci:/path[:tag]`` or ``docker-archive:/path.tar[:name:tag]``),
    imported into the store unless it is there already (then only its manifest is read and
    verified).  ``max_size`` bounds the unpacked size in bytes (default: 20 GiB or half the
    store's free space, whichever is smaller).  Raises ImageError naming the layer and entry
    of anything refused; nothing is kept of a refused import."""
    source, name = oci.open_source(ref)
    with source:
        manifest = source.resolve(name)
        existing = store.get(manifest.key)
        if existing is not None:
            return store.touch(existing)
        config = from_oci(manifest.config, f"image {ref!r}")
        limit = store.disk_budget(max_size)
        dropped: list[str] = []

        def build(root: str) -> int:
            budget = Budget(limit)
            tree = Tree(root, budget)
            try:
                for layer in manifest.layers:
                    where = f"image {ref!r}: layer {layer.index} ({layer.digest or layer.name})"
                    try:
                        blob = source.open_blob(layer)
                    except OSError as exc:
                        raise ImageError(f"{where}: {exc}") from None
                    with blob:
                        tree.apply(blob, layer, where)
            finally:
                tree.close()
            dropped.extend(tree.dropped)
            return budget.used

        return store.add(manifest.key, build, source=ref, config=config,
                         dropped=lambda: tuple(dropped))


def resolve_image(ref: str) -> store.Image:
    """The stored image a root filesystem reference names: ``image:ID`` (an id, a unique
    prefix of one, or a source reference already imported) is looked up in the store;
    ``oci:``/``docker-archive:`` references are imported (once: later calls only verify the
    manifest)."""
    if ref.startswith("image:"):
        return store.touch(store.lookup(ref[len("image:"):]))
    return import_image(ref)
