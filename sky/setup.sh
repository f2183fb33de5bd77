#!/usr/bin/env bash
# The `setup` of every training/eval task: install this project on the rented box around the
# image's torch, never over it. `bash sky/setup.sh` from the workdir (this repository).
#
# Why: the image (`image_id` in the YAML) carries a CUDA build of torch matched to its CUDA
# runtime. `pip install -e .` on its own could resolve another torch and download a multi-GB
# CUDA wheel on paid time that may not match the host's driver. So this script
#   1. refuses at once, before installing anything, when the image's torch is outside the range
#      pyproject.toml supports (its `torch` requirement, read with `packaging`);
#   2. installs with a pip constraint equal to the image's exact torch build, so pip keeps it
#      (a dependency asking for another torch fails to resolve instead of replacing it);
#   3. installs the extras named in WIKIGPT_EXTRAS (comma-separated, e.g. `wandb,lmeval`): the
#      launcher sets them from what the stage's spec turns on;
#   4. checks afterwards that the torch in use is still the image's;
#   5. records how long it took in ~/wikigpt_io/setup_seconds (run_stage.sh reports it).
set -euo pipefail
start=$(date +%s)
io=~/wikigpt_io
mkdir -p "$io"
extras="${WIKIGPT_EXTRAS?the launcher sets WIKIGPT_EXTRAS (by hand: --env WIKIGPT_EXTRAS=wandb)}"

image_torch="$(python -c 'import torch; print(torch.__version__)')"
# Prints the supported range when the image's torch is outside it, nothing when it is inside.
outside="$(IMAGE_TORCH="$image_torch" python - <<'PY'
import os
import tomllib

try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # an image without `packaging`: pip always vendors it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
torch_req = next(r for r in map(Requirement, deps) if r.name == "torch")
# The local label (+cu126) names the build, not the release the range is about.
if not torch_req.specifier.contains(Version(os.environ["IMAGE_TORCH"]).public, prereleases=True):
    print(torch_req)
PY
)"
if [ -n "$outside" ]; then
  echo "setup: the image's torch is $image_torch, but this project supports $outside (pyproject.toml)." >&2
  echo "setup: refusing to install over it; set the YAML's image_id to an image whose torch is in that range" >&2
  echo "setup: (TRAINING_IMAGE in wikigpt_pipeline/launchers/images.py)." >&2
  exit 3
fi
echo "torch==$image_torch" > "$io/torch-constraint.txt"
target="."
if [ -n "$extras" ]; then target=".[$extras]"; fi
python -m pip install --quiet --constraint "$io/torch-constraint.txt" -e "$target"
after="$(python -c 'import torch; print(torch.__version__)')"
if [ "$after" != "$image_torch" ]; then
  echo "setup: torch changed from $image_torch to $after during the install" >&2
  exit 3
fi
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
echo $(( $(date +%s) - start )) > "$io/setup_seconds"
