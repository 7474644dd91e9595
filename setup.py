"""Builds the C masking extension; the metadata lives in setup.cfg.

The extension is optional: where it cannot be compiled (no C compiler, say), the install
still succeeds and :mod:`geo_ws.protocol.frames` masks in pure Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("geo_ws.protocol._mask", ["geo_ws/protocol/_mask.c"], optional=True),
    ],
)
