"""Build hook: the only thing setup.py does is compile cext/ through cffi.

Everything else lives in pyproject.toml. Environment switches read by
cext/build_ffi.py: UNBROKEN_CEXT_SANITIZE=1 (ASan + UBSan build),
UNBROKEN_CEXT_DEBUG=1 (-O0 -g), UNBROKEN_CEXT_NO_SSE42=1 (table CRC only).
"""
from setuptools import setup

setup(cffi_modules=["cext/build_ffi.py:ffibuilder"])
