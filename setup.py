"""Registers the cffi extension (native/build.py); everything else is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
