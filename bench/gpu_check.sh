#!/usr/bin/env bash
# One-shot GPU check (DESIGN.md §3: GPU bench scripts also run on CPU at debug size, so they cannot rot).
#
#   bash bench/gpu_check.sh            # CUDA: DiT-XL/2 256px invariants 2+3, ARD N=6 vs N=0 speed, 1-GPU DeepSpeed
#   bash bench/gpu_check.sh --cpu      # CPU: the same at debug size (gloo), a few minutes
#
# 1-3: bench/gpu_check.py (environment; invariants 2 and 3 in fp32 with TF32 off; flex == dense SDPA history
#      attention, forward and gradients; training fwd+bwd and KV-cached
#      sampling of ARD N=6 over N=0, interleaved, medians, peak memory).
# 4:   bench/train_step.py (issue 18): student fwd+bwd ARD N=6 / N=0 with flex and with sdpa history attention at
#      PixArt-Σ 1024 and DiT-XL/2 256, a whole regression step (teacher / student / optimizer, tokens/s, MFU against
#      the measured bf16 matmul peak), and the teacher trajectory vs the diffusers loop; --debug sizes on CPU.
# 5:   the real trainer under torchrun on one process (nccl on CUDA, gloo on CPU): recipes/tiny_cpu.yaml for 6 steps,
#      then the same command to 10 steps resumes from the checkpoint; once in bf16, once in fp32. Losses from
#      metrics.jsonl.
# On a machine without the pinned packages, install the wheels first (the list: bench/results/gpu_check_h200.txt):
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site bash bench/gpu_check.sh
# Env: PYTHON (default python3), OUT (where gpu_check.json and metrics_*.jsonl go; default a temp folder),
#      SKIP_PY=1 / SKIP_STEP=1 / SKIP_DS=1 to skip a part (STEP_TIMEOUT, default 300 s, bounds part 4).
#      Exit status 1 if any part failed; every part runs regardless.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
[[ "${1:-}" == "--cpu" ]] && MODE=cpu
PY=${PYTHON:-python3}
OUTDIR=${OUT:-$(mktemp -d /tmp/gpu_check_out.XXXX)}
RUNROOT=$(mktemp -d /tmp/gpu_check_runs.XXXX)
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
status=0
t_start=$SECONDS
echo "== gpu_check.sh mode=$MODE python=$($PY -c 'import sys; print(sys.executable, sys.version.split()[0])') out=$OUTDIR"
[[ $MODE == gpu ]] && { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; }

# The imports every part needs. If the diffusers import breaks on a machine whose extra packages (accelerate, peft)
# do not fit the pinned set, hide those two (the pinned set has neither) and say so.
probe() { $PY -c 'import deepspeed, diffusers; from diffusers import DiTTransformer2DModel, AutoencoderKL; import ard_scale.trainer.loop' 2>&1; }
if ! probe_out=$(probe); then
    echo "!! import probe failed:"; echo "$probe_out" | tail -25
    hide="$RUNROOT/hide"; mkdir -p "$hide"
    printf 'import sys\nfor _m in ("peft", "accelerate"):\n    sys.modules.setdefault(_m, None)\n' >"$hide/sitecustomize.py"
    export PYTHONPATH="$hide:$PYTHONPATH"
    echo "!! retrying with peft and accelerate hidden (sitecustomize in $hide)"
    probe_out=$(probe) || { echo "$probe_out" | tail -25; status=1; }
fi
$PY -c 'import sys, deepspeed, diffusers; import ard_scale.trainer.loop; print("   imported: transformers", "transformers" in sys.modules, "accelerate", "accelerate" in sys.modules, "peft", "peft" in sys.modules)' 2>&1 | grep -v "real_accelerator"

if [[ -z "${SKIP_PY:-}" ]]; then
    args=(--json "$OUTDIR/gpu_check.json")
    [[ $MODE == cpu ]] && args+=(--cpu)
    $PY bench/gpu_check.py "${args[@]}" || { echo "!! gpu_check.py exited $?"; status=1; }
fi

if [[ -z "${SKIP_STEP:-}" ]]; then
    echo
    echo "== bench/train_step.py: student flex vs sdpa (PixArt-Σ 1024, DiT-XL/2 256), a whole step, teacher trajectory"
    args=(--json "$OUTDIR/train_step.json")
    [[ $MODE == cpu ]] && args+=(--debug)
    timeout "${STEP_TIMEOUT:-300}" $PY bench/train_step.py "${args[@]}" || { echo "!! train_step.py exited $?"; status=1; }
fi

if [[ -z "${SKIP_DS:-}" ]]; then
    port=$((29500 + RANDOM % 2000))
    for prec in bf16 fp32; do
        run_dir="$RUNROOT/run_$prec"
        for steps in 6 10; do
            echo
            echo "== DeepSpeed trainer, 1 process, precision $prec, to max_steps=$steps (run_dir $run_dir)"
            log="$RUNROOT/train_${prec}_$steps.log"
            t0=$SECONDS
            timeout "${TRAIN_TIMEOUT:-180}" $PY -m torch.distributed.run --nproc_per_node 1 --master_port $port \
                launchers/train.py recipes/tiny_cpu.yaml train.max_steps=$steps train.precision=$prec \
                checkpoint.run_dir="$run_dir" >"$log" 2>&1
            rc=$?
            grep -v -e FutureWarning -e "return func(" -e real_accelerator.py -e "^\s*$" "$log" |
                { if [[ $rc == 0 ]]; then tail -8; else grep -v -e "^  " -e "^\[rank0\]:  " | tail -30; fi; }
            [[ $rc == 0 ]] || grep "^\[rank0\]:   File \"/.*ard_scale\|^\[rank0\]: [A-Za-z]*Error" "$log" | tail -12
            cp "$log" "$OUTDIR/" 2>/dev/null
            echo "   exit $rc after $((SECONDS - t0)) s; run_dir: $(ls "$run_dir" 2>/dev/null | tr '\n' ' ')" \
                "checkpoints: $(ls "$run_dir/checkpoints" 2>/dev/null | tr '\n' ' ')"
            [[ $rc == 0 ]] || { echo "!! trainer $prec to $steps steps FAILED (exit $rc)"; status=1; break; }
        done
        if [[ -f "$run_dir/metrics.jsonl" ]]; then
            cp "$run_dir/metrics.jsonl" "$OUTDIR/metrics_$prec.jsonl"
            $PY - "$run_dir/metrics.jsonl" "$prec" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"   {sys.argv[2]}: {len(rows)} logged steps (6 in the first run + 4 after the resume expected)")
for r in rows:
    per = " ".join(f"{v:.4f}" for v in r.get("loss_per_step", []))
    print(f"   step {r.get('step', '?'):>2}  loss {r.get('loss', float('nan')):.6f}  per step [{per}]  "
          f"grad_norm {r.get('grad_norm', float('nan')):.3f}  nan {r.get('nan')}  teacher_s {r.get('teacher_s', 0):.2f}  "
          f"student_s {r.get('student_s', 0):.2f}  max_mem_gb {r.get('max_mem_gb', 0):.2f}")
EOF
        else
            echo "!! no metrics.jsonl for $prec"; status=1
        fi
    done
fi
echo
echo "== gpu_check.sh done in $((SECONDS - t_start)) s, status $status"
exit $status
