# Source inside a SLURM allocation: starts a Ray head on the first node and a Ray worker on every other
# node (each a `ray start --block` job step, ended with the allocation), waits until all nodes joined,
# and exports RAY_ADDRESS=head:port for `heurbench sweep --address "$RAY_ADDRESS"`.
# Ray's token auth (on by default for `ray start`): every node and client reads the token from
# ~/.ray/auth_token (a shared home) or $RAY_AUTH_TOKEN; clients need RAY_AUTH_MODE=token to send it.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
# srun's per-task variables must not reach Ray's processes, and so the trials in them: harness.distributed would take
# each trial for one rank of a DDP group over the job step's tasks (slurm/launch.py's TASK_ENV, for the same reason).
_hb_untask=(env -u SLURM_PROCID -u SLURM_LOCALID -u SLURM_NODEID -u SLURM_STEP_ID -u SLURM_STEPID -u SLURM_NTASKS
            -u SLURM_NPROCS -u SLURM_STEP_NUM_TASKS)
RAY_PORT=${RAY_PORT:-$((6379 + SLURM_JOB_ID % 1000))}
mapfile -t _hb_nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
_hb_head=${_hb_nodes[0]}
_hb_ip=$(srun --overlap --nodes=1 --ntasks=1 -w "$_hb_head" hostname -I | awk '{print $1}')
export RAY_ADDRESS="$_hb_ip:$RAY_PORT"
_hb_cpus=${SLURM_CPUS_ON_NODE:-$(nproc)}
srun --overlap --nodes=1 --ntasks=1 -w "$_hb_head" \
  "${_hb_untask[@]}" ray start --head --node-ip-address="$_hb_ip" --port="$RAY_PORT" --num-cpus="$_hb_cpus" --include-dashboard=false --block &
sleep 5
if [ "${#_hb_nodes[@]}" -gt 1 ]; then
  # --ntasks: else srun takes the allocation's (one per node), one more than these nodes, and refuses or doubles up
  srun --overlap --nodes=$((${#_hb_nodes[@]} - 1)) --ntasks=$((${#_hb_nodes[@]} - 1)) --ntasks-per-node=1 \
    --exclude="$_hb_head" \
    "${_hb_untask[@]}" ray start --address="$RAY_ADDRESS" --num-cpus="$_hb_cpus" --block &
fi
for _ in $(seq 1 60); do
  _hb_alive=$(python -c "import ray; ray.init(address='$RAY_ADDRESS', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))" 2>/dev/null | tail -1)
  [ "${_hb_alive:-0}" -ge "${#_hb_nodes[@]}" ] 2>/dev/null && break
  sleep 5
done
echo "ray cluster at $RAY_ADDRESS: $_hb_alive of ${#_hb_nodes[@]} node(s)"
