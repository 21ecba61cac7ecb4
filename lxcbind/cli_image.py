"""``lxcbind image import|ls|rm|prune``: the local image store from the command line.

Imported only when ``image`` is the subcommand (``run``'s import path never loads it).  Exit
codes as for the rest of the CLI: 0 done, 1 an image to remove was not there or is in use
(the others are still removed), 2 a usage error, 125 an import that failed or was refused
(one line naming the layer and entry).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from lxcbind.image import Image


def add_parser(sub: Any) -> None:
    """The ``image`` subcommand and its own subcommands, on ``build_parser``'s subparsers."""
    p = sub.add_parser("image", help="import, list and remove images of the local store")
    images = p.add_subparsers(dest="image_command", required=True,
                              parser_class=type(p))
    imp = images.add_parser("import", help="import an OCI layout or docker archive (offline)")
    imp.add_argument("ref", metavar="REF",
                     help="oci:/PATH[:TAG] or docker-archive:/PATH.tar[:NAME:TAG]")
    imp.add_argument("--max-size", type=_size, metavar="BYTES", default=None,
                     help="refuse an image that unpacks to more (default: 20 GiB or half the "
                          "free space)")
    imp.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ls = images.add_parser("ls", help="list the stored images and the containers using them")
    ls.add_argument("--json", action="store_true", help="one JSON object on stdout")
    rm = images.add_parser("rm", help="remove stored images (refused while one is in use)")
    rm.add_argument("ids", nargs="+", metavar="ID", help="image ids, short ids or source refs")
    pr = images.add_parser("prune", help="remove unused images and what killed imports left")
    pr.add_argument("--unused-for", type=float, default=0.0, metavar="SECONDS",
                    help="only images not used for this long (default 0: every unused image)")


def _size(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bytes, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _row(image: Image, users: list[str]) -> dict[str, Any]:
    return {"id": image.id, "source": image.source, "size": image.size,
            "created": image.created, "last_used": image.last_used, "parent": image.parent,
            "used_by": users}


def main(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> int:
    from lxcbind.errors import ImageError
    from lxcbind.image import store

    command = args.image_command
    if command == "import":
        from lxcbind.image import import_image

        image = import_image(args.ref, max_size=args.max_size)
        if args.json:
            emit({"image": _row(image, []), "exit_code": 0})
        else:
            sys.stdout.write(f"{image.id}\n")
        return 0
    if command == "ls":
        rows = [(i, store.users(i)) for i in store.list_images()]
        if args.json:
            emit({"images": [_row(i, u) for i, u in rows], "exit_code": 0})
            return 0
        lines = [f"{'ID':<12}  {'SIZE':>9}  {'CREATED':<16}  {'USED BY':<10}  SOURCE"]
        for image, users in rows:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(image.created))
            lines.append(f"{image.short_id:<12}  {_human(image.size):>9}  {created:<16}  "
                         f"{','.join(users) or '-':<10}  {image.source}")
        sys.stdout.write("\n".join(lines) + "\n")
        return 0
    if command == "rm":
        code = 0
        for ref in args.ids:
            try:
                removed = store.remove(ref)
            except ImageError as exc:
                sys.stderr.write(f"lxcbind: image rm: {exc}\n")
                code = 1
                continue
            sys.stdout.write(f"removed {removed.id}\n")
        return code
    for what in store.prune(unused_for=args.unused_for):
        sys.stdout.write(f"removed {what}\n")
    return 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
