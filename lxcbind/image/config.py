"""An image config's command defaults (``Env``, ``WorkingDir``, ``User``, ``Entrypoint``,
``Cmd``) and how a run combines them with what the policy and the call say.

Precedence, lowest first: the image, then the policy, then the call.  The environment is
merged by name (the policy's and the call's values win); the working directory and user are
replaced.  The command follows Docker's rule: with no command from the policy or the call the
image's ``Entrypoint + Cmd`` runs; a command given replaces ``Cmd`` and, like ``docker run
--entrypoint``, is not prefixed by the image's ``Entrypoint``: a sandbox runs exactly the argv it
was given.  ``ImageConfig`` is a plain value: it is stored in the image record as JSON.
"""

from __future__ import annotations

from typing import Any

from lxcbind._lite import record
from lxcbind.errors import ImageError


@record
class ImageConfig:
    env: tuple[str, ...] = ()            # "NAME=value", in the image's order
    working_dir: str | None = None
    user: str | None = None              # "uid[:gid]" or a name, as the image says
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"env": list(self.env), "working_dir": self.working_dir, "user": self.user,
                "entrypoint": list(self.entrypoint), "cmd": list(self.cmd)}

    @classmethod
    def from_json(cls, data: Any) -> ImageConfig:
        data = data if isinstance(data, dict) else {}
        return cls(tuple(data.get("env") or ()), data.get("working_dir"), data.get("user"),
                   tuple(data.get("entrypoint") or ()), tuple(data.get("cmd") or ()))

    @property
    def argv(self) -> tuple[str, ...]:
        """What the image runs when nobody names a command."""
        return self.entrypoint + self.cmd

    def env_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.env:
            name, sep, value = item.partition("=")
            if sep and name:
                out[name] = value
        return out


def from_oci(config: dict[str, Any], where: str) -> ImageConfig:
    """The command defaults of an OCI (or Docker) image config, checked for type."""
    section = config.get("config") or {}
    if not isinstance(section, dict):
        raise ImageError(f"{where}: config.config is not an object")

    def strings(key: str) -> tuple[str, ...]:
        value = section.get(key) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ImageError(f"{where}: config.config.{key} is not a list of strings")
        if any("\0" in v for v in value):
            raise ImageError(f"{where}: config.config.{key} holds a NUL byte")
        return tuple(value)

    def text(key: str) -> str | None:
        value = section.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str) or "\0" in value:
            raise ImageError(f"{where}: config.config.{key} is not a string")
        return value

    return ImageConfig(strings("Env"), text("WorkingDir"), text("User"),
                       strings("Entrypoint"), strings("Cmd"))
