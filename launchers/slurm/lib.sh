# Functions of launchers/slurm/train.sbatch, in a file of their own so that tests/unit/test_slurm_script.py can run
# them in plain bash (sourced by the batch script from ARD_ROOT; it sets no option and runs nothing itself).

# ard_run_finished RUN_DIR MAX_STEPS: true when the run's newest complete checkpoint is at train.max_steps or beyond,
# i.e. the run has nothing left to train. RUN_DIR/checkpoints/latest names it as step_<digits>
# (ard_scale/checkpoint/layout.py).
ard_run_finished() {
  local tag
  tag=$(cat "$1/checkpoints/latest" 2>/dev/null) || return 1
  [[ $tag =~ ^step_([0-9]+)$ ]] && ((10#${BASH_REMATCH[1]} >= $2))
}
