"""Build steps pyproject.toml cannot declare: the Cython hot path and the protocol descriptors.

The protocol is compiled from proto/ to a serialized FileDescriptorSet (``proto/inference.binpb``),
not to ``*_pb2.py`` modules: tensorwire loads it into a private descriptor pool at run time, so
its ``inference.*`` messages never collide with tritonclient's or MLServer's generated modules in
the default pool of the same process.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE / "proto"
PROTO_FILES = ["grpc_service.proto", "model_config.proto"]
DESCRIPTOR_SET = PROTO_DIR / "inference.binpb"


def compile_protos() -> None:
    """Compile proto/*.proto into one descriptor set with grpcio-tools' bundled protoc."""
    from grpc_tools import protoc  # build requirement (pyproject [build-system])

    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        "--include_imports",
        f"--descriptor_set_out={DESCRIPTOR_SET}",
        *[str(PROTO_DIR / name) for name in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_FILES}")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        compile_protos()
        super().run()


def extensions() -> list[Extension]:
    from Cython.Build import cythonize

    flags = ["-O3"] if os.name != "nt" else []
    exts = [Extension("tensorwire.fastpath._wire", sources=["fastpath/_wire.pyx"], extra_compile_args=flags)]
    if os.name == "posix":  # guarded copies out of shared memory (sigsetjmp, mmap); preadv/pwrite elsewhere
        exts.append(Extension("tensorwire.fastpath._mapped", sources=["fastpath/_mapped.pyx"],
                              extra_compile_args=flags))
    return cythonize(
        exts,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


if os.environ.get("TENSORWIRE_SKIP_PROTOC") != "1" and not DESCRIPTOR_SET.exists():
    # Editable installs and `setup.py build_ext --inplace` skip build_py; make the descriptors anyway.
    compile_protos()

setup(ext_modules=extensions(), cmdclass={"build_py": BuildPyWithProtos})
