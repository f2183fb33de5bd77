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
# from the HF Hub before the stage, uploaded every WIKIGPT_HUB_SYNC_S seconds while it runs
# (so a preempted spot instance resumes from its last checkpoint), and the outputs are pushed
# when it ends (how managed spot jobs bring results back).
set -euo pipefail
# An optional first argument names another module to run with the same args (a stage of a
# project built on this one); by default it is the stage CLI.
if [ -n "${1:-}" ]; then
  command="python -m $1"
else
  command="python -m wikigpt_core.run ${WIKIGPT_STAGE:?the launcher sets WIKIGPT_STAGE to the stage to run}"
fi
io=~/wikigpt_io
mkdir -p "$io/in" "$io/out" "$io/work"

if [ -n "${WANDB_API_KEY:-}" ]; then export WANDB_MODE=online; fi

hub="${WIKIGPT_HUB_REPO:-}"
prefix="${WIKIGPT_HUB_PREFIX:-runs/manual}"
sync_pid=""
if [ -n "$hub" ]; then
  python -m wikigpt_pipeline.launchers.hub_sync pull "$hub" "$prefix/work" "$io/work"
  python -m wikigpt_pipeline.launchers.hub_sync watch "$io/work" "$hub" "$prefix/work" \
    --interval "${WIKIGPT_HUB_SYNC_S:-600}" &
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
