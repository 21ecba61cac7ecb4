# All metadata is in pyproject.toml; this file names the cffi builder and adds one step to
# build_ext: the session spawner (a static executable) and the container starter, programs
# shipped inside the package.
import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _builder():
    spec = importlib.util.spec_from_file_location(
        "_lxcbind_build", Path(__file__).resolve().parent / "lxcbind" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildExt(build_ext):
    def run(self):
        super().run()
        builder = _builder()
        root = Path(__file__).resolve().parent if self.inplace else Path(self.build_lib)
        builder.build_spawner(root / "lxcbind" / builder.SPAWNER_NAME)
        builder.build_starter(root / "lxcbind" / builder.STARTER_NAME)
        builder.build_cloner(root / "lxcbind" / builder.CLONER_NAME)


# The modules are built against the stable ABI (cffi's abi3, ``_lxc.abi3.so``, ``_nft.abi3.so``:
# libnftables apart, loaded by networked runs only) and the spawner
# is a static executable: tag the wheel so, for every CPython from 3.11 (requires-python) on.
setup(cffi_modules=["lxcbind/_build.py:ffibuilder", "lxcbind/_build.py:nftbuilder"],
      zip_safe=False,
      cmdclass={"build_ext": BuildExt},
      options={"bdist_wheel": {"py_limited_api": "cp311"}})
