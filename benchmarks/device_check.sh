#!/usr/bin/env bash
# One prepared run on a GPU machine (H100/H200; no network; PyTorch, Triton and nvcc installed), at most 9.5 minutes
# (stage timeouts 150 + 200 + 110 + 50 + 60 s, then the trainer-step check in what is left of 570 s):
#   1. build the extension with CUDA (sm_90a),
#   2. run the GPU tests: compiled Triton against float64, fixed noise bit-identical CPU vs CUDA, a training step
#      under torch.cuda.set_sync_debug_mode("error") (no op synchronises), device-side value checks,
#      torch.compile(fullgraph=True) of the step with zero graph breaks, gradients equal to eager's, and its
#      CUDA-graph (reduce-overhead) replay; plus the compile/opcheck and no-host-read tests on CPU tensors,
#   3. run the benchmarks and print the summary table (op, shape, dtype, eager, compile, ambient_fast, GB/s,
#      % of measured copy bandwidth, ambient_fast with validate=False and the cost of the default checks, and a
#      compiled step that calls ambient_fast),
#   4. the trainer's step eager, compiled and with CUDA graphs (reduce-overhead), sync-free after warm-up: each
#      outcome recorded in trainer_step.json (a failure is recorded, not fatal).
# Logs go to $OUT (the device tool's folder) when set, else ./device_check_out.
# Usage: bash benchmarks/device_check.sh        (AMBIENT_FAST_BENCH_COMPILE=0 drops the torch.compile column)
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS="${OUT:-$PWD/device_check_out}"
mkdir -p "$LOGS"
PYTHON="${PYTHON:-python3}"
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
status=0
stage() { echo; echo "=== $1 ($(date +%H:%M:%S))"; }

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
nvcc --version | tail -1

stage "build the extension with CUDA"
AMBIENT_FAST_CUDA=on AMBIENT_FAST_BUILD_JOBS=16 timeout 150 "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e . \
  >"$LOGS/build.log" 2>&1 || { echo "BUILD FAILED (tail of build.log):"; tail -40 "$LOGS/build.log"; status=1; }
"$PYTHON" -c "import ambient_fast as af; print('backends on cuda:', af.backends('cuda')); print('backends on cpu:', af.backends('cpu'))"

stage "GPU tests"
timeout 200 "$PYTHON" -m pytest tests/test_gpu.py tests/test_sample_noise.py tests/test_crops_op.py tests/test_compile.py \
  tests/test_no_host_sync.py tests/test_flow_loss.py tests/test_networks_dit.py tests/test_train_flow.py tests/test_train_dit.py -q -p no:cacheprovider 2>&1 | tee "$LOGS/gpu_tests.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# The op benchmarks (loss, noising, flow loss, copy bandwidth) first, so the table exists whatever happens later.
# benchmarks/test_bench_annotate.py trains a classifier (minutes): not part of this check.
OP_BENCHMARKS="benchmarks/test_bench_ambient_loss.py benchmarks/test_bench_noising.py benchmarks/test_bench_flow_loss.py"
stage "benchmarks: eager and ambient_fast"
export AMBIENT_FAST_BENCH_RESULTS="$LOGS/results.jsonl"
rm -f "$AMBIENT_FAST_BENCH_RESULTS"
AMBIENT_FAST_BENCH_COMPILE=0 timeout 110 "$PYTHON" -m pytest $OP_BENCHMARKS --benchmark-only -q -p no:cacheprovider \
  >"$LOGS/benchmarks.log" 2>&1 || status=1
grep -E "passed|failed|error" "$LOGS/benchmarks.log" | tail -3

stage "benchmarks: training step (ambient vs plain EDM) and the crops op (batching vs classifier time)"
AMBIENT_FAST_BENCH_COMPILE=0 timeout 50 "$PYTHON" -m pytest benchmarks/test_bench_train.py benchmarks/test_bench_crops.py --benchmark-only -q -s \
  -p no:cacheprovider >"$LOGS/benchmarks_train_crops.log" 2>&1 || status=1
grep -E "train step on|overhead|passed|failed|error" "$LOGS/benchmarks_train_crops.log" | tail -6

stage "benchmarks: torch.compile baseline (what finishes in time is kept)"
timeout "${COMPILE_SECONDS:-60}" "$PYTHON" -m pytest $OP_BENCHMARKS --benchmark-only -q -p no:cacheprovider -k compile \
  >"$LOGS/benchmarks_compile.log" 2>&1 || echo "(compile baseline incomplete or failed: see benchmarks_compile.log)"
grep -E "passed|failed|error" "$LOGS/benchmarks_compile.log" | tail -3
"$PYTHON" benchmarks/summary.py "$AMBIENT_FAST_BENCH_RESULTS" | tee "$LOGS/summary.txt"

# The trainer's step on the GPU, eager, compiled (Inductor) and compiled with CUDA graphs (mode="reduce-overhead"):
# 30 steps each of the tiny-cpu network at 16x16, batch 64; from step 4 on every step runs under
# torch.cuda.set_sync_debug_mode("error") (the losses and flags are read only at the log steps, outside the step).
# Each outcome (ms/step of the last 9 steps, losses against eager's, or the error) goes to trainer_step.json; a
# failure is recorded, not fatal. It gets the time left of the 570 s (at most 150 s).
stage "trainer step: eager, compiled, CUDA graphs (reduce-overhead)"
left=$(( 570 - SECONDS )); [ "$left" -gt 150 ] && left=150
if [ "$left" -lt 40 ]; then
  echo "skipped: ${left} s left" | tee "$LOGS/trainer_step.log"
else
  LOGS="$LOGS" timeout "$left" "$PYTHON" - >"$LOGS/trainer_step.log" 2>&1 <<'PY' || echo "(trainer step check incomplete or failed: see trainer_step.log)"
import json, os, time, traceback
import torch, torch._dynamo
from ambient_fast.data import TensorDataset
from ambient_fast.train import loop, preset, train

logs = os.environ["LOGS"]
images = torch.rand(256, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
step_call = loop.Stepper.__call__

def guarded(self, step, batch):  # a synchronising CUDA call inside a step raises (after 4 warm-up steps)
    torch.cuda.set_sync_debug_mode("error" if step >= 4 else "default")
    try:
        step_call(self, step, batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")

loop.Stepper.__call__ = guarded
results, eager = {}, None
for name, extra in {"eager": {}, "compiled": {"compile": True},
                    "reduce-overhead": {"compile": True, "compile_mode": "reduce-overhead"}}.items():
    config = preset("tiny-cpu", total_steps=30, batch_size=64, log_every=10, checkpoint_every=1000, snapshot_every=0,
                    num_workers=0, lr_rampup_steps=0, verify_data=False, **extra)
    torch._dynamo.reset()
    started = time.perf_counter()
    try:
        out = train(config, run_dir=f"{logs}/trainer_{name}", device="cuda", dataset=TensorDataset(images), log=lambda *_: None)
        rows = [json.loads(line) for line in open(f"{logs}/trainer_{name}/metrics.jsonl")]
        result = {"ok": True, "ms_per_step_last_rows": 1e3 * rows[-1]["sec_per_step"], "seconds_total": time.perf_counter() - started,
                  "first_losses": out["losses"][:3], "finite": all(v == v for v in out["losses"])}
        if eager is None:
            eager = out["losses"]
        else:
            result["max_rel_diff_vs_eager_first_5"] = max(abs(a - b) / abs(b) for a, b in zip(out["losses"][:5], eager[:5]))
    except Exception as error:
        result = {"ok": False, "error": f"{type(error).__name__}: {str(error)[:800]}", "trace": traceback.format_exc()[-2000:]}
    results[name] = result
    print(name, json.dumps({k: v for k, v in result.items() if k != "trace"}), flush=True)
    json.dump(results, open(f"{logs}/trainer_step.json", "w"), indent=1)
PY
  cat "$LOGS/trainer_step.log" | tail -6
fi

stage "done (status $status)"
exit $status
