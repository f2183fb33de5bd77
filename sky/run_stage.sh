#!/usr/bin/env bash
# Runs one WikiGPT stage CLI inside a SkyPilot task: `bash sky/run_stage.sh wikigpt_core.<stage>`.
#
# WIKIGPT_STAGE_ARGS holds the CLI flags, written by the launcher with remote paths under
# ~/wikigpt_io (unquoted, so `~` expands here) and every other value shell-quoted; `eval`
# turns it back into argv. Dagster Pipes variables, if present, are inherited by the stage,
# which then prints its Pipes messages to stdout, where `sky.tail_logs` carries them home.
#
# With WIKIGPT_HUB_REPO set (vast.ai cannot mount buckets), the training scratch is restored
# from the HF Hub before the stage, uploaded every WIKIGPT_HUB_SYNC_S seconds while it runs
# (so a preempted spot instance resumes from its last checkpoint), and the outputs are pushed
# when it ends (how managed spot jobs bring results back).
set -euo pipefail
module="$1"
io=~/wikigpt_io
mkdir -p "$io/in" "$io/out" "$io/work"

if [ -n "${WANDB_API_KEY:-}" ]; then export WANDB_MODE=online; fi
if [ -f "$io/in/wikigpt_config.toml" ]; then export WIKIGPT_CONFIG="$io/in/wikigpt_config.toml"; fi

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
eval "python -m ${module} ${WIKIGPT_STAGE_ARGS:-}" || status=$?

if [ -n "$sync_pid" ]; then
  kill "$sync_pid" 2>/dev/null || true
  if [ "$status" -eq 0 ]; then
    python -m wikigpt_pipeline.launchers.hub_sync push "$io/out" "$hub" "$prefix/out"
  else
    python -m wikigpt_pipeline.launchers.hub_sync push "$io/work" "$hub" "$prefix/work" || true
  fi
fi
exit "$status"
