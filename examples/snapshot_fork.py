"""Set up once, then branch: a sandbox builds a small project, its filesystem is snapshotted,
three forks each try a different patch, and a Pool grades variants from the snapshot, each in a
fresh container that starts from the built state.

    python3 examples/snapshot_fork.py     (as root)
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import lxcbind  # noqa: E402
from lxcbind.image import snapshot  # noqa: E402

POLICY = {"version": "0.8.0", "lxc": {"limits": {"memory": "512M", "pids": 256}}}
# (A real setup would install and compile; this one writes the project and a data file.)
SETUP = ("mkdir -p /opt/proj && cd /opt/proj && "
         "printf 'def score(x):\\n    return x * x\\n' > grade.py && seq 1000 > data.txt")


def main() -> None:
    with lxcbind.Sandbox(POLICY) as box:
        box.run(SETUP, check=True)
        snap = box.snapshot()   # the built project, as an image
        forks = box.fork(3)     # three started sandboxes from the same state
    try:
        for i, fork in enumerate(forks):   # each patches its own copy; none sees the others'
            fork.run(f"sed -i 's/x \\* x/x * {i + 2}/' /opt/proj/grade.py", check=True)
            out = fork.run("cd /opt/proj && python3 -B -c 'import grade; print(grade.score(10))'")
            print(f"fork {i}: score(10) = {out.stdout.decode().strip()}")
    finally:
        for fork in forks:
            fork.close()
    try:
        with lxcbind.Pool(POLICY, size=2, image=snap) as pool:
            cmds = [f"cd /opt/proj && python3 -B -c 'import grade; print(grade.score({n}))'"
                    for n in range(10)]
            print("graded:", [r.stdout.decode().strip() for r in pool.map(cmds)])
    finally:
        snapshot.remove(snap)


if __name__ == "__main__":
    main()
