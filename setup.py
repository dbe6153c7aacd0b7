"""Optional C extensions (everything else is in pyproject.toml).

Each extension speeds up one hot loop that numpy runs in several passes; each is ``optional``: on a
machine without a C compiler the install still succeeds and the code falls back to numpy (slower,
same results). docs/decisions/0004-native-kernels.md says why.
"""

from setuptools import Extension, setup

CFLAGS = ["-O3", "-std=c11"]

EXTENSIONS = [
    Extension(
        "llm_compression.weightfile._unsplit",
        ["llm_compression/weightfile/_unsplit.c"],
        extra_compile_args=CFLAGS,
        optional=True,
    ),
    Extension(
        "llm_compression.tables._scan",
        ["llm_compression/tables/_scan.c"],
        extra_compile_args=CFLAGS,
        optional=True,
    ),
    Extension(
        "llm_compression.core._decode",
        ["llm_compression/core/_decode.c"],
        # -ffp-contract=off: the portable kernel's float operations stay the ones written, the
        # AVX512 kernel's, bit for bit (tests compare them); OpenMP: the matmuls' two threads;
        # -fno-wrapv undoes Python's -fwrapv, which kept gcc from vectorizing the attention's
        # int-indexed loops (a step of 8 rows at position 90: 13.7 -> 10.3 ms)
        extra_compile_args=[*CFLAGS, "-ffp-contract=off", "-fopenmp", "-fno-wrapv"],
        extra_link_args=["-fopenmp"],
        optional=True,
    ),
]

setup(ext_modules=EXTENSIONS)
