#!/usr/bin/env bash
# The `setup` of every training/eval task: install this project on the rented box around the
# image's torch, never over it. `bash sky/setup.sh` from the workdir (this repository).
#
# Why: the image (`image_id` in the YAML) carries a CUDA build of torch matched to its CUDA
# runtime. `pip install -e .` on its own would resolve pyproject's exact torch pin and, if the
# image's torch differed, download a multi-GB CUDA wheel on paid time that may not match the
# host's driver. So the image must carry the torch the project pins and is tested with (the
# YAMLs name a pytorch/pytorch image of that version), and this script
#   1. refuses at once, before installing anything, when the image's torch differs from the pin;
#   2. installs with a pip constraint equal to the image's exact torch build, so pip keeps it
#      (a dependency asking for another torch fails to resolve instead of replacing it);
#   3. checks afterwards that the torch in use is still the image's;
#   4. records how long it took in ~/wikigpt_io/setup_seconds (run_stage.sh reports it).
set -euo pipefail
start=$(date +%s)
io=~/wikigpt_io
mkdir -p "$io"

pinned="$(python - <<'PY'
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(d.split("==", 1)[1].strip() for d in deps if d.replace(" ", "").startswith("torch==")))
PY
)"
image_torch="$(python -c 'import torch; print(torch.__version__)')"
if [ "${image_torch%%+*}" != "$pinned" ]; then
  echo "setup: the image's torch is $image_torch, but this project pins and is tested with torch==$pinned." >&2
  echo "setup: refusing to install over it; set the YAML's image_id to an image carrying torch $pinned" >&2
  echo "setup: (e.g. docker:pytorch/pytorch:$pinned-<cuda>-cudnn9-runtime)." >&2
  exit 3
fi
echo "torch==$image_torch" > "$io/torch-constraint.txt"
python -m pip install --quiet --constraint "$io/torch-constraint.txt" -e ".[wandb]"  # W&B logs online when WANDB_API_KEY is set
after="$(python -c 'import torch; print(torch.__version__)')"
if [ "$after" != "$image_torch" ]; then
  echo "setup: torch changed from $image_torch to $after during the install" >&2
  exit 3
fi
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
echo $(( $(date +%s) - start )) > "$io/setup_seconds"
