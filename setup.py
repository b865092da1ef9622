"""Builds the compiled upload pass (ARCHITECTURE.md decision 12); the rest is in pyproject."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(
                "telemeter.core._fastpass",
                ["telemeter/core/_fastpass.pyx"],
                extra_compile_args=["-O3"],
                libraries=["deflate"],  # libdeflate (Debian: libdeflate-dev)
            )
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )
)
