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

# ard_ranks_per_node: the ranks torchrun starts on each node: the GPUs allocated on the node, else the tasks per node.
# Every node must run the same number (torchrun's --nproc_per_node): an uneven task layout such as
# SLURM_TASKS_PER_NODE=2,1 (--ntasks not a multiple of --nodes) is refused with one line naming the fix.
ard_ranks_per_node() {
  if [ "${SLURM_GPUS_ON_NODE:-0}" -gt 0 ]; then
    echo "$SLURM_GPUS_ON_NODE"
    return
  fi
  local tasks=${SLURM_TASKS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-1}}
  if [[ $tasks == *,* ]]; then
    echo "error: uneven tasks per node (SLURM_TASKS_PER_NODE=$tasks), but every node runs the same number of ranks:" \
      "submit with --ntasks-per-node=K (and --nodes=N) instead of --ntasks" >&2
    return 1
  fi
  echo "${tasks%%(*}" # "2(x3)": 2 on each of 3 nodes
}

# ard_omp_threads CPUS RANKS: each rank's share of the node's CPUs (at least 1), for OMP_NUM_THREADS. torchrun would
# else give each of several ranks 1 thread, slow for what the ranks compute on the CPU (an offloaded optimizer's step).
ard_omp_threads() {
  local threads=$(($1 / $2))
  echo $((threads > 0 ? threads : 1))
}
