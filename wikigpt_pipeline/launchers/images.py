"""The container images the rented boxes start from, named once.

The task YAMLs (`sky/*.yaml`) carry these same tags as their `image_id`, so a task launched by
hand with `sky launch` runs what the launcher runs; tests/pipeline/test_rented_boxes.py holds
every YAML to these constants. Change a tag here and in the YAMLs together.

Both tags are ones public repositories use (a tag that does not exist fails every launch at the
pull, on paid time).
"""
from __future__ import annotations

from wikigpt_core.stages import STAGES

TRAINING_IMAGE = "docker:pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime"
"""Training and evaluation boxes: torch 2.13.0, inside the supported range (pyproject's
`torch>=2.11,<2.14`), built for CUDA 12.6, so any host driver from 560 on runs it. sky/setup.sh
installs the project around this torch, never over it."""

TEACHER_IMAGE = "docker:vllm/vllm-openai:v0.26.0"
"""The teacher box: vLLM's own image, with its torch, CUDA and compiler toolchain, so serving
needs no pip install on paid time (CUDA 12.9: host driver 575 or newer)."""

TEACHER_TASK = "teacher"
"""The YAML that serves the teacher on TEACHER_IMAGE."""


def image_for(task: str) -> str:
    """The image `sky/<task>.yaml` must name."""
    if task == TEACHER_TASK:
        return TEACHER_IMAGE
    if task in {s.task for s in STAGES.values() if s.launched}:  # every launched stage's task
        return TRAINING_IMAGE
    raise ValueError(f"no image is declared for the SkyPilot task {task!r}; add it to "
                     "wikigpt_pipeline/launchers/images.py")
