"""Build script for the optional native extension; all other metadata lives in pyproject.toml.

``optional=True``: if the C++ compiler is missing or the build fails, the package still installs
and ``robustact.activations.select`` uses its pure-Python (numpy) fallback.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "robustact.activations._select",
            ["src/robustact/activations/_select.cpp"],
            language="c++",
            # No -march flags: the binary must run on any x86-64 / aarch64 CPU; the AVX2 and
            # AVX-512 kernels are selected at run time.
            extra_compile_args=["-O3", "-std=c++17"],
            optional=True,
        )
    ]
)
