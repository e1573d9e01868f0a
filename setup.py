"""Build the compiled routing core; all metadata lives in pyproject.toml."""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

def _ext(module: str) -> Extension:
    return Extension(
        module,
        [module.replace(".", "/") + ".pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )


# One compiled module per job, in the layer it belongs to (sorter/_shared.pxd: their helpers).
extensions = [
    _ext("sorter._shared"),             # helpers every compiled module shares (_shared.pxd)
    _ext("sorter.core._core"),          # decode, resolve, route
    _ext("sorter.wire._wire"),          # the binary wire protocol, parsed into columns
    _ext("sorter.audit._segment"),      # walk a journal segment's records (the compactor's reader)
    _ext("sorter.engine._turn"),        # one engine turn: route, DECISION message, counts
]

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
