# Functions of launchers/slurm/train.sbatch, in a file of their own so that tests/unit/test_slurm_script.py can run
# them in plain bash (sourced by the batch script from ARD_ROOT; it sets no option and runs nothing itself).

# ard_run_finished RUN_DIR MAX_STEPS: true when the run has nothing left to train: its newest complete checkpoint is at
# train.max_steps or beyond, or its data ran out there (RUN_DIR/data_ended names that checkpoint: the trainer writes
# it when the data ends before train.max_steps, ard_scale/trainer/loop.py DATA_ENDED). RUN_DIR/checkpoints/latest
# names the checkpoint as step_<digits> (ard_scale/checkpoint/layout.py); none yet reads as step 0.
ard_run_finished() {
  local tag ended
  tag=$(cat "$1/checkpoints/latest" 2>/dev/null) || tag=step_00000000
  ended=$(cat "$1/data_ended" 2>/dev/null) && [ "$ended" = "$tag" ] && return 0
  [[ $tag =~ ^step_([0-9]+)$ ]] && ((10#${BASH_REMATCH[1]} >= $2))
}

# ard_ranks_per_node: the ranks torchrun starts on each node: the GPUs allocated on the node, else the tasks per node.
# Every node must run the same number (torchrun's --nproc_per_node), and the batch script sees the batch node's count
# only (SLURM_GPUS_ON_NODE): a layout that can differ between nodes is refused with one line naming the fix. Uneven
# tasks such as SLURM_TASKS_PER_NODE=2,1 (--ntasks not a multiple of --nodes) when ranks follow tasks (no GPUs, or
# --gpus-per-task); GPUs counted per job on several nodes (--gpus=N / -G N: Slurm may place 8 on one node and 4 on
# another), unless --gpus-per-node says the count of each.
ard_ranks_per_node() {
  local tasks=${SLURM_TASKS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-1}}
  local nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
  local gpus=${SLURM_GPUS_ON_NODE:-0}
  if [ "$gpus" -gt 0 ] && [ "$nodes" -gt 1 ] && [ -z "${SLURM_GPUS_PER_NODE:-}" ] && [ -n "${SLURM_GPUS:-}" ]; then
    echo "error: --gpus=$SLURM_GPUS counts the job's GPUs, which Slurm may spread unevenly over its $nodes nodes" \
      "(this one has $gpus), but every node runs the same number of ranks: submit with --gpus-per-node=K (and" \
      "--nodes=N) instead of --gpus" >&2
    return 1
  fi
  if [[ $tasks == *,* ]] && { [ "$gpus" -eq 0 ] || [ -n "${SLURM_GPUS_PER_TASK:-}" ]; }; then
    echo "error: uneven tasks per node (SLURM_TASKS_PER_NODE=$tasks), but every node runs the same number of ranks:" \
      "submit with --ntasks-per-node=K (and --nodes=N) instead of --ntasks" >&2
    return 1
  fi
  if [ "$gpus" -gt 0 ]; then
    echo "$gpus"
    return
  fi
  echo "${tasks%%(*}" # "2(x3)": 2 on each of 3 nodes
}

# ard_node_cpus: the CPUs each node's training step takes (srun's --cpus-per-task for its one task per node): the
# fewest the job has on any of its nodes (SLURM_JOB_CPUS_PER_NODE, e.g. "72(x2),36"), not the batch node's own count,
# which a smaller node cannot give (srun would refuse the step). Nodes that differ are said on stderr.
ard_node_cpus() {
  local list=${SLURM_JOB_CPUS_PER_NODE:-${SLURM_CPUS_ON_NODE:-1}} entry count fewest=""
  local -a entries
  IFS=, read -ra entries <<<"$list"
  for entry in "${entries[@]}"; do
    count=${entry%%(*} # "72(x2)": 72 on each of 2 nodes
    if [ -z "$fewest" ] || [ "$count" -lt "$fewest" ]; then fewest=$count; fi
  done
  if [ "${#entries[@]}" -gt 1 ]; then
    echo "ard_scale: the job's nodes have different CPU counts (SLURM_JOB_CPUS_PER_NODE=$list): each node's step" \
      "takes $fewest, the fewest" >&2
  fi
  echo "$fewest"
}

# ard_omp_threads CPUS RANKS: each rank's share of the node's CPUs (at least 1), for OMP_NUM_THREADS. torchrun would
# else give each of several ranks 1 thread, slow for what the ranks compute on the CPU (an offloaded optimizer's step).
ard_omp_threads() {
  local threads=$(($1 / $2))
  echo $((threads > 0 ? threads : 1))
}
