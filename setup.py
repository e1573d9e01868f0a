"""Build the compiled routing core; all metadata lives in pyproject.toml."""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

def _ext(name: str) -> Extension:
    return Extension(
        f"sorter.{name}",
        [f"sorter/{name}.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )


# _core: decode, resolve, route. _wire: the binary wire protocol, parsed into columns.
# _audit: audit record batches as Arrow IPC messages. _turn: one engine turn, composed in C.
# _zmqio: drain and send through the libzmq pyzmq loaded. _line: the scan turns in C, over it.
extensions = [_ext("_core"), _ext("_wire"), _ext("_audit"), _ext("_turn"), _ext("_zmqio"),
              _ext("_line")]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)
