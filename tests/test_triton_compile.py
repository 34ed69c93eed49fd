"""Every Triton kernel compiles ahead of time for the GPU (sm_90, H100/H200) on this CPU-only machine: the
interpreter runs the logic, this catches what only the compiler sees (types, layouts, lowering). No GPU needed:
Triton ships ptxas, so the whole pipeline down to a cubin runs here.

The kernels must be created with TRITON_INTERPRET unset, so pytest runs this file in a fresh interpreter
(test_kernels_compile_for_hopper below, which sets AMBIENT_FAST_AOT_CHILD=1 and TRITON_INTERPRET=0 for it).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

if os.environ.get("AMBIENT_FAST_AOT_CHILD") == "1":
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ambient_fast.ops import ambient_loss, ambient_noising, noising

    HOPPER = GPUTarget("cuda", 90, 32)
else:
    triton = pytest.importorskip("triton")


def test_kernels_compile_for_hopper():
    env = {**os.environ, "TRITON_INTERPRET": "0", "AMBIENT_FAST_AOT_CHILD": "1", "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "hopper_child"],
        capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]


child_only = pytest.mark.skipif(os.environ.get("AMBIENT_FAST_AOT_CHILD") != "1", reason="runs in the child process")


def compile_for_hopper(kernel, signature, constexprs, *, divisible_by_16=(), **options):
    """Compile a @triton.jit kernel to a cubin for sm_90; returns the compiled kernel's assembly dict.

    divisible_by_16: arguments to mark as Triton's launcher does at run time for aligned pointers and integers
    that are multiples of 16 (what enables vectorised memory access)."""
    jit_function = kernel
    full_signature = {name: ("constexpr" if name in constexprs else signature[name]) for name in jit_function.arg_names}
    attrs = {(jit_function.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible_by_16}
    source = ASTSource(jit_function, full_signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=HOPPER, options={"num_warps": 4, **options})
    assert compiled.asm["cubin"], "no cubin produced"
    return compiled.asm


def _loss_signature(element: str, accumulate: str) -> dict:
    pointer, scalars = f"*{element}", {"n_per_sample": "i64", "chunk_size": "i64", "num_chunks": "i32"}
    return {
        "pred_ptr": pointer, "x_t_ptr": pointer, "x_tn_ptr": pointer, "grad_ptr": pointer,
        "sigma_t_ptr": f"*{accumulate}", "sigma_tn_ptr": f"*{accumulate}", "logvar_ptr": f"*{accumulate}",
        "partial_ptr": f"*{accumulate}", "status_ptr": "*i32", **scalars,
        "pred_row_stride": "i64", "x_t_row_stride": "i64", "x_tn_row_stride": "i64",
        "sigma_data": "fp32", "grad_scale": "fp32",
    }


@child_only
@pytest.mark.parametrize("element,accumulate", [("fp32", "fp32"), ("bf16", "fp32"), ("fp16", "fp32"), ("fp64", "fp64")])
@pytest.mark.parametrize("precondition", [False, True])
@pytest.mark.parametrize("has_logvar", [False, True])
def test_hopper_child_loss_kernels(element, accumulate, precondition, has_logvar):
    acc = {"fp32": tl.float32, "fp64": tl.float64}[accumulate]
    compile_for_hopper(
        ambient_loss._ambient_loss_forward_kernel, _loss_signature(element, accumulate),
        {"PRECONDITION": precondition, "HAS_LOGVAR": has_logvar, "COMPUTE_GRAD": True, "CHECK": True,
         "STATUS_SHIFT": 0, "ACC": acc, "BLOCK": 1024},
    )
    compile_for_hopper(
        ambient_loss._ambient_loss_finalize_kernel,
        {"partial_ptr": f"*{accumulate}", "loss_ptr": f"*{accumulate}", "grad_logvar_ptr": f"*{accumulate}",
         "sigma_t_ptr": f"*{accumulate}", "sigma_tn_ptr": f"*{accumulate}", "logvar_ptr": f"*{accumulate}",
         "n_per_sample": "i64", "num_chunks": "i32", "sigma_data": "fp32", "grad_scale": "fp32"},
        {"HAS_LOGVAR": has_logvar, "ACC": acc, "BLOCK": 128},
    )
    compile_for_hopper(
        ambient_loss._scale_rows_kernel,
        {"grad_ptr": f"*{element}", "grad_loss_ptr": f"*{accumulate}", "grad_loss_stride": "i64",
         "n_per_sample": "i64"},
        {"BLOCK": 1024},
    )


@child_only
@pytest.mark.parametrize("has_noise", [False, True])
@pytest.mark.parametrize("element", ["fp32", "bf16"])
def test_hopper_child_add_noise_kernel(has_noise, element):
    asm = compile_for_hopper(
        noising._add_noise_forward_kernel,
        {"x_ptr": f"*{element}", "noise_ptr": f"*{element}", "out_ptr": f"*{element}", "sigma_t_ptr": "*fp32",
         "sigma_tn_ptr": "*fp32", "seed_ptr": "*i64", "status_ptr": "*i32", "n_per_sample": "i64",
         "x_row_stride": "i64", "noise_row_stride": "i64", "offset": "i64"},
        {"HAS_NOISE": has_noise, "HAS_SIGMA_TN": True, "CHECK": True, "STATUS_SHIFT": 4, "ACC": tl.float32,
         "GROUPS": 256},
        enable_fp_fusion=False,
    )
    # The noise scale is a correctly rounded square root and x + std * eps is not fused, as on the CPU: with passed
    # noise the same bits. (The generated eps uses Triton's own randn, whose square root is approximate.)
    assert "sqrt.rn.f32" in asm["ptx"]
    if has_noise:
        assert "sqrt.approx" not in asm["ptx"] and "fma.rn.f32" not in asm["ptx"]


@child_only
def test_hopper_child_ambient_noising_kernel():
    signature = {"x0_ptr": "*bf16", "sample_ids_ptr": "*i64", "sigma_t_ptr": "*fp32", "sigma_tn_ptr": "*fp32",
                 "x_tn_ptr": "*bf16", "x_t_ptr": "*bf16", "seed_ptr": "*i64", "status_ptr": "*i32",
                 "n_per_sample": "i64", "x0_row_stride": "i64", "annotation_seed": "i64", "offset": "i64"}
    compile_for_hopper(ambient_noising._ambient_noising_forward_kernel, signature,
                       {"CHECK": True, "STATUS_SHIFT": 8, "PHILOX_BLOCKS": 256}, enable_fp_fusion=False)


def _fixed_noise_only_kernel(sample_ids_ptr, out_ptr, annotation_seed, PHILOX_BLOCKS: tl.constexpr):
    """The fixed-noise half of _ambient_noising_forward_kernel alone, to inspect its instructions."""
    blocks = tl.program_id(0).to(tl.int64) * PHILOX_BLOCKS + tl.arange(0, PHILOX_BLOCKS).to(tl.int64)
    sample_id = tl.load(sample_ids_ptr)
    lo = (blocks & 0xFFFFFFFF).to(tl.uint32)
    words = tl.philox(annotation_seed, lo, (blocks >> 32).to(tl.uint32), (lo * 0 + (sample_id & 0xFFFFFFFF)).to(tl.uint32), (lo * 0).to(tl.uint32))
    z0, z1 = ambient_noising._box_muller(words[0], words[1])
    tl.store(out_ptr + blocks, z0 + z1)


@child_only
def test_hopper_child_fixed_noise_uses_only_correctly_rounded_arithmetic():
    """Bit-identity with the CPU needs IEEE division and square root and no fused multiply-add in the PTX."""
    asm = compile_for_hopper(triton.jit(_fixed_noise_only_kernel), {"sample_ids_ptr": "*i64", "out_ptr": "*fp32", "annotation_seed": "i64"},
                             {"PHILOX_BLOCKS": 256}, enable_fp_fusion=False)
    ptx = asm["ptx"]
    assert "fma.rn.f32" not in ptx and "fma.rz" not in ptx, "fused multiply-add in the fixed-noise arithmetic"
    assert "div.approx" not in ptx and "div.full" not in ptx and "sqrt.approx" not in ptx
    assert "div.rn.f32" in ptx and "sqrt.rn.f32" in ptx


@child_only
@pytest.mark.parametrize("element", ["fp32", "bf16"])
def test_hopper_child_loss_kernel_vectorises_aligned_rows(element):
    """With aligned rows (the common case, specialised by Triton at launch) every tensor access is 16 bytes wide."""
    asm = compile_for_hopper(
        ambient_loss._ambient_loss_forward_kernel, _loss_signature(element, "fp32"),
        {"PRECONDITION": True, "HAS_LOGVAR": False, "COMPUTE_GRAD": True, "CHECK": True, "STATUS_SHIFT": 0,
         "ACC": tl.float32, "BLOCK": 1024},
        divisible_by_16=("pred_ptr", "x_t_ptr", "x_tn_ptr", "grad_ptr", "n_per_sample", "chunk_size",
                         "pred_row_stride", "x_t_row_stride", "x_tn_row_stride"),
    )
    ptx = asm["ptx"]
    wide = "v4.b32" if element == "fp32" else "v4.b16"  # 4 x fp32 or, after packing, 8 x bf16 as v4.b32
    assert re.search(r"ld\.global(\.nc)?\.v4\.b32", ptx) or wide in ptx, "loads are not vectorised"
    assert "st.global.v4" in ptx or "st.global.v2" in ptx, "gradient stores are not vectorised"
