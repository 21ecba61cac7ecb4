"""One container's whole life under a policy: root filesystems, mounts, isolation, cleanup,
pools.  ``Sandbox``, ``run``, ``gc`` and the policy-aware ``Session`` live in ``core``."""

from lxcbind.sandbox.core import PolicyLike, Sandbox, Session, as_policy, gc, run

__all__ = ["PolicyLike", "Sandbox", "Session", "as_policy", "gc", "run"]
