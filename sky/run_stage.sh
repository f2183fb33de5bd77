#!/usr/bin/env bash
# Runs one WikiGPT stage inside a SkyPilot task: `python -m wikigpt_core.run $WIKIGPT_STAGE --spec ...`.
#
# The launcher sets WIKIGPT_STAGE (the stage's name in wikigpt_core/stages.py) and
# WIKIGPT_STAGE_ARGS (`--spec ~/wikigpt_io/in/spec.json`: the stage's resolved spec, its paths
# rewritten to the remote layout under ~/wikigpt_io and uploaded with the inputs; unquoted, so
# `~` expands here). The stage reads its config from that spec only, never from the environment. Dagster Pipes variables, if present, are inherited by the stage,
# which then prints its Pipes messages to stdout, where `sky.tail_logs` carries them home.
#
# With WIKIGPT_HUB_REPO set (vast.ai cannot mount buckets), the training scratch is restored
# from the HF Hub before the stage, checked every WIKIGPT_HUB_SYNC_S seconds while it runs and
# uploaded when a new checkpoint appeared (so a preempted spot instance resumes from its last
# checkpoint; a check without a new one costs nothing), and the outputs are pushed
# when it ends (how managed spot jobs bring results back).
#
# Several GPUs: with SKYPILOT_NUM_GPUS_PER_NODE > 1 the stage starts under torchrun, one process
# per GPU; with SKYPILOT_NUM_NODES > 1 torchrun also gets this node's rank and the head node's
# IP as the rendezvous address (SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS). WIKIGPT_TORCHRUN=0 keeps
# one process (a stage that is not a training loop, such as the evaluation). Only global rank 0
# speaks Dagster Pipes and writes the artifact; only node 0 syncs with the Hub.
set -euo pipefail
# An optional first argument names another module to run with the same args (a stage of a
# project built on this one); by default it is the stage CLI.
if [ -n "${1:-}" ]; then
  module="-m $1"
else
  module="-m wikigpt_core.run ${WIKIGPT_STAGE:?the launcher sets WIKIGPT_STAGE to the stage to run}"
fi
gpus="${SKYPILOT_NUM_GPUS_PER_NODE:-1}"
nodes="${SKYPILOT_NUM_NODES:-1}"
node_rank="${SKYPILOT_NODE_RANK:-0}"
if [ "${WIKIGPT_TORCHRUN:-1}" = "0" ]; then
  launch="python"
elif [ "$nodes" -gt 1 ]; then
  head_ip="$(echo "${SKYPILOT_NODE_IPS:?SkyPilot sets the node IPs on multi-node clusters}" | head -n1)"
  launch="python -m torch.distributed.run --nnodes=$nodes --node_rank=$node_rank --nproc_per_node=$gpus --master_addr=$head_ip --master_port=${WIKIGPT_MASTER_PORT:-29500}"
elif [ "$gpus" -gt 1 ]; then
  launch="python -m torch.distributed.run --standalone --nproc_per_node=$gpus"
else
  launch="python"
fi
command="$launch $module"
io=~/wikigpt_io
mkdir -p "$io/in" "$io/out" "$io/work"
# How long the task's setup took on this box (sky/setup.sh), for the launcher's metadata.
if [ "$node_rank" = "0" ] && [ -f "$io/setup_seconds" ]; then echo "WIKIGPT_SETUP_SECONDS=$(cat "$io/setup_seconds")"; fi
echo "[run_stage] $command ${WIKIGPT_STAGE_ARGS:-}"

if [ -n "${WANDB_API_KEY:-}" ]; then export WANDB_MODE=online; fi

hub="${WIKIGPT_HUB_REPO:-}"
if [ "$node_rank" != "0" ]; then hub=""; fi  # checkpoints and outputs live on the head node
prefix="${WIKIGPT_HUB_PREFIX:-runs/manual}"
sync_pid=""
if [ -n "$hub" ]; then
  python -m wikigpt_pipeline.launchers.hub_sync pull "$hub" "$prefix/work" "$io/work"
  python -m wikigpt_pipeline.launchers.hub_sync watch "$io/work" "$hub" "$prefix/work" \
    --interval "${WIKIGPT_HUB_SYNC_S:-60}" &
  sync_pid=$!
fi

status=0
eval "${command} ${WIKIGPT_STAGE_ARGS:-}" || status=$?

if [ -n "$sync_pid" ]; then
  kill "$sync_pid" 2>/dev/null || true
  if [ "$status" -eq 0 ]; then
    python -m wikigpt_pipeline.launchers.hub_sync push "$io/out" "$hub" "$prefix/out"
  else
    python -m wikigpt_pipeline.launchers.hub_sync push "$io/work" "$hub" "$prefix/work" || true
  fi
fi
exit "$status"
