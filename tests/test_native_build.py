"""Compile checks for the native sources that do not need a GPU or a built extension:
every kernels/*.cu through nvcc (sm_90a, no FMA contraction), kernels/philox.cuh through plain g++ (and run it
against the PyTorch twin), and csrc/ops_cuda.cpp against torch's CUDA headers."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
CUDA_SOURCES = sorted(KERNELS.glob("*.cu"))
NVCC = shutil.which("nvcc")
GXX = shutil.which("g++")
NVCC_FLAGS = ["-arch=sm_90a", "--fmad=false", "-std=c++17"]

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: CUDA sources not compile-checked")
needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ is not on PATH")


def _load_philox_twin():
    """ambient_fast/_philox.py by path, so this test does not depend on the rest of the package."""
    spec = importlib.util.spec_from_file_location("_philox_twin", ROOT / "ambient_fast" / "_philox.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def test_there_are_cuda_sources():
    assert CUDA_SOURCES, "kernels/ has no .cu file"


@needs_nvcc
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda path: path.name)
def test_cuda_source_compiles_for_sm90a(source, tmp_path):
    _run([NVCC, "-c", *NVCC_FLAGS, str(source), "-o", str(tmp_path / (source.stem + ".o"))], tmp_path)


@needs_nvcc
def test_noise_kernel_has_no_fused_multiply_add(tmp_path):
    """--fmad=false must leave no fma.*.f32 in the PTX: one FMA would break bit-identity with the CPU."""
    ptx = tmp_path / "sample_noise.ptx"
    _run([NVCC, "-ptx", *NVCC_FLAGS, str(KERNELS / "sample_noise.cu"), "-o", str(ptx)], tmp_path)
    text = ptx.read_text()
    assert "mul.rn.f32" in text, "expected float multiplies in the noise kernel"
    assert "fma.rn.f32" not in text and "fma.rz.f32" not in text
    assert "sqrt.approx" not in text and "div.approx" not in text and "div.full" not in text


HOST_PROGRAM = r"""
#include "philox.cuh"
#include <cinttypes>
#include <cstdio>
int main() {
  const uint64_t cases[][3] = {{0, 0, 0}, {1234, 17, 5}, {0xFFFFFFFFFFFFFFFFull, 0x100000003ull, 0x1234567ull}};
  for (const auto& c : cases) {
    float z[4];
    af_normal4(c[0], c[1], c[2], z);
    std::printf("%" PRIu64 " %" PRIu64 " %" PRIu64, c[0], c[1], c[2]);
    for (float value : z) std::printf(" %08x", af_float_to_bits(value));
    std::printf("\n");
  }
  for (const auto& c : cases) {  // the fresh-noise stream: seed c[0], counter c[2]
    float z[4];
    af_fresh_normal4(c[0], c[2], z);
    std::printf("fresh %" PRIu64 " %" PRIu64, c[0], c[2]);
    for (float value : z) std::printf(" %08x", af_float_to_bits(value));
    std::printf("\n");
  }
  return 0;
}
"""
FRESH_DOMAIN_KEY = 0x46525348  # "FRSH" in kernels/philox.cuh


@needs_gxx
def test_philox_header_is_plain_cpp_and_matches_the_torch_twin(tmp_path):
    """philox.cuh compiles with g++ alone (no CUDA, no torch) under -Wall -Werror, and its normals equal the twin's."""
    source = tmp_path / "host_philox.cpp"
    source.write_text(HOST_PROGRAM)
    binary = tmp_path / "host_philox"
    _run([GXX, "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", f"-I{KERNELS}",
          str(source), "-o", str(binary)], tmp_path)
    output = _run([str(binary)], tmp_path).stdout.split("\n")
    twin = _load_philox_twin()
    for line in filter(None, output):
        if line.startswith("fresh"):
            _, seed, counter, *words = line.split()
            seed, counter = int(seed), int(counter)
            x = twin.philox4x32_10([torch.tensor([counter & 0xFFFFFFFF]), torch.tensor([counter >> 32]),
                                    torch.tensor([0]), torch.tensor([0])], (seed & 0xFFFFFFFF) ^ FRESH_DOMAIN_KEY,
                                   seed >> 32)
            noise = torch.cat([*twin.box_muller(x[0], x[1]), *twin.box_muller(x[2], x[3])])
            assert [format(v & 0xFFFFFFFF, "08x") for v in noise.view(torch.int32).tolist()] == words, line
            continue
        seed, sample_id, block, *words = line.split()
        signed_id = int(sample_id) - (1 << 64) if int(sample_id) >= 1 << 63 else int(sample_id)
        noise = twin.normal4(torch.tensor([signed_id]), torch.tensor([int(block)]), int(seed))[0]
        twin_bits = [format(v & 0xFFFFFFFF, "08x") for v in noise.view(torch.int32).tolist()]
        assert twin_bits == words, f"seed={seed} id={sample_id} block={block}"


def _cuda_include_dir() -> Path | None:
    for candidate in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if candidate and (Path(candidate) / "include" / "cuda_runtime_api.h").exists():
            return Path(candidate) / "include"
    if NVCC is not None:
        guess = Path(NVCC).resolve().parents[1] / "include"
        if (guess / "cuda_runtime_api.h").exists():
            return guess
    return None


@needs_gxx
def test_cuda_op_registration_compiles(tmp_path):
    """csrc/ops_cuda.cpp (built only with CUDA) at least compiles against torch's CUDA headers."""
    cuda_include = _cuda_include_dir()
    if cuda_include is None:
        pytest.skip("no CUDA toolkit headers (cuda_runtime_api.h) found")
    torch_include = Path(torch.__file__).parent / "include"
    # CPU wheels ship c10/cuda headers but not this CMake-generated one; stub it as a CUDA build would define it.
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    _run([GXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-DAF_WITH_CUDA",
          "-isystem", str(torch_include), "-isystem", str(torch_include / "torch" / "csrc" / "api" / "include"),
          "-isystem", str(cuda_include), "-isystem", str(tmp_path / "stub"), str(ROOT / "csrc" / "ops_cuda.cpp")],
         tmp_path)
