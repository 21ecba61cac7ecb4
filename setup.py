# All metadata is in pyproject.toml; this file only names the cffi builder.
from setuptools import setup

setup(cffi_modules=["lxcbind/_build.py:ffibuilder"], zip_safe=False)
