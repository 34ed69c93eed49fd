"""Build ambient_fast: Python package + the optional native extension ambient_fast._C (CMake, see CMakeLists.txt).

Environment:
  AMBIENT_FAST_NO_EXT=1        skip the extension (pure PyTorch install)
  AMBIENT_FAST_CUDA=auto|on|off  auto (default): CUDA kernels only if nvcc is found AND torch is a CUDA build
  AMBIENT_FAST_CUDA_ARCHS      CMAKE_CUDA_ARCHITECTURES, default 90a (e.g. "80;90a")
  AMBIENT_FAST_BUILD_JOBS      parallel compile jobs, default 2
Install with `pip install -e . --no-build-isolation` (build isolation would download a second torch).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _log(message: str) -> None:
    print(f"ambient_fast build: {message}", file=sys.stderr, flush=True)


def _cuda_enabled(torch_cuda: str | None) -> bool:
    mode = os.environ.get("AMBIENT_FAST_CUDA", "auto").strip().lower() or "auto"
    nvcc = shutil.which("nvcc")
    if mode == "off":
        _log("AMBIENT_FAST_CUDA=off: building CPU ops only")
        return False
    if mode == "on":
        problems = []
        if nvcc is None:
            problems.append("nvcc is not on PATH")
        if torch_cuda is None:
            problems.append("the installed torch is a CPU-only build (torch.version.cuda is None)")
        if problems:
            raise RuntimeError("AMBIENT_FAST_CUDA=on but " + " and ".join(problems))
        return True
    if mode != "auto":
        raise RuntimeError(f"AMBIENT_FAST_CUDA must be auto, on or off; got {mode!r}")
    if nvcc is None:
        _log("AMBIENT_FAST_CUDA=auto: nvcc not found, building CPU ops only")
        return False
    if torch_cuda is None:
        _log(f"AMBIENT_FAST_CUDA=auto: nvcc found ({nvcc}) but torch is a CPU-only build, building CPU ops only")
        return False
    _log(f"AMBIENT_FAST_CUDA=auto: building CUDA kernels (nvcc {nvcc}, torch CUDA {torch_cuda})")
    return True


def _nvcc_version() -> str | None:
    try:
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def _torch_arch_list(cmake_archs: str) -> str:
    """CMake architectures ("90a;80") in TORCH_CUDA_ARCH_LIST spelling ("9.0a;8.0"), for torch's cuda.cmake."""
    spelled = []
    for arch in cmake_archs.replace(",", ";").split(";"):
        match = re.fullmatch(r"(\d+)(\d)([a-z]?)(-real|-virtual)?", arch.strip())
        if match:
            spelled.append(f"{match.group(1)}.{match.group(2)}{match.group(3)}")
    return ";".join(spelled)


MIN_CMAKE = (3, 26)


def _tool(name: str) -> str | None:
    """A build tool from the environment running this build (pip's `cmake` / `ninja` packages install them next to
    the interpreter, which need not be on PATH), else from PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which(name)


def _cmake() -> str:
    cmake = _tool("cmake")
    if cmake is None:
        raise RuntimeError("cmake not found: pip install 'cmake>=3.26' (or set AMBIENT_FAST_NO_EXT=1)")
    output = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=True).stdout
    version = tuple(int(part) for part in output.split()[2].split(".")[:2])
    if version < MIN_CMAKE:
        raise RuntimeError(f"{cmake} is CMake {output.split()[2]}; the extension needs >= 3.26: "
                           "pip install 'cmake>=3.26' into this environment")
    return cmake


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch  # imported here so that metadata-only commands work without torch
        import torch.utils

        output_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        with_cuda = _cuda_enabled(torch.version.cuda)
        args = [
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DAMBIENT_FAST_OUTPUT_DIR={output_dir}",
            f"-DAMBIENT_FAST_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
        ]
        env = dict(os.environ)
        if with_cuda:
            archs = os.environ.get("AMBIENT_FAST_CUDA_ARCHS", "90a")
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
            # torch's cmake probes the GPU for its own arch list unless told; we override its flags anyway.
            env.setdefault("TORCH_CUDA_ARCH_LIST", _torch_arch_list(archs) or "9.0a")
            nvcc_version = _nvcc_version()
            if nvcc_version and nvcc_version.split(".")[0] != torch.version.cuda.split(".")[0]:
                _log(f"warning: nvcc {nvcc_version} and torch CUDA {torch.version.cuda} differ in major version; "
                     f"the kernel links the CUDA runtime statically, so it needs a driver for CUDA {nvcc_version}")
        ninja = _tool("ninja")
        if ninja:
            args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        jobs = os.environ.get("AMBIENT_FAST_BUILD_JOBS", "2")
        cmake = _cmake()
        _log(f"configuring with {cmake}" + (f" and {ninja}" if ninja else ""))
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True, env=env)
        subprocess.run([cmake, "--build", str(build_dir), "-j", jobs], check=True, env=env)


def _extensions() -> list[Extension]:
    if os.environ.get("AMBIENT_FAST_NO_EXT", "0") == "1":
        _log("AMBIENT_FAST_NO_EXT=1: skipping the native extension (pure PyTorch install)")
        return []
    return [CMakeExtension("ambient_fast._C")]


setup(ext_modules=_extensions(), cmdclass={"build_ext": CMakeBuild})
