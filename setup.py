"""Builds the compiled passes (docs/architecture.md, D12) and declares the console
scripts; the rest is in pyproject.toml.

The dev harness (dev/: the local Redis Cluster, the stack behind `make demo`, the authorization
stand-in) is installed from a checkout, for the demo and the tests. The image's build context holds
only the stand-in of it (compose runs it), so only the scripts whose module is present are declared.
"""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "telemeter-server": "app.main:main",
    "telemeter-client": "client.main:main",
    "telemeter-benchmark": "client.benchmark:main",
    "telemeter-authorization-server": "dev.authorization_server:main",
    "telemeter-redis-cluster": "dev.redis_cluster:main",
    "telemeter-stack": "dev.stack:main",
}


def _present(target: str) -> bool:
    module = target.split(":")[0].replace(".", "/")
    return (HERE / f"{module}.py").exists() or (HERE / module / "__init__.py").exists()


setup(
    entry_points={
        "console_scripts": [f"{n} = {t}" for n, t in SCRIPTS.items() if _present(t)],
    },
    ext_modules=cythonize(
        [
            # The growable buffer and the text writers, shared through _buffer.pxd; the upload
            # pass; the client's pass and snappy encoder; stored snapshots (layout in
            # _snapshot.pxd), their merge.
            Extension(f"telemeter.{name}", [f"telemeter/{name}.pyx"], extra_compile_args=["-O3"])
            for name in ("_buffer", "_fastpass", "_clientpass", "_framed")
        ]
        + [
            Extension(
                "telemeter._snapshot",
                ["telemeter/_snapshot.pyx"],
                extra_compile_args=["-O3"],
                libraries=["deflate"],  # libdeflate (Debian: libdeflate-dev)
            ),
            Extension(
                "telemeter._remotewrite",
                ["telemeter/_remotewrite.pyx"],
                extra_compile_args=["-O3"],
            ),
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
)
