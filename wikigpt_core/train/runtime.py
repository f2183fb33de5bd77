"""Where and how a training run executes: device, DDP ranks, autocast, compile, optimizer.

Precision and compile are settings of their own (`TrainConfig.precision`, `.compile`); their
`auto` is: on CUDA, bf16 autocast (weights and optimizer state stay float32) and torch.compile;
elsewhere float32 and eager. Either can be forced on any device: `precision = "bf16"` runs CPU
bf16 autocast, `compile = "on"` compiles through inductor with the machine's C compiler, which
is how the GPU path is tested on CPU. On CUDA, SDPA picks the flash kernel for causal bf16
attention, AdamW is fused and TF32 matmuls are allowed. Under torchrun (RANK/WORLD_SIZE set)
the process group is initialised here: NCCL on CUDA, gloo on CPU.

Two settings pick kernels, not results (they differ within bf16 rounding): `compile_mode`
(torch.compile's mode) and `attention` (the SDPA backend preferred for causal attention;
packed blocks go through FlexAttention on CUDA whatever it says, see `doc_attention`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


PRECISIONS = ("auto", "bf16", "fp32")
COMPILE_MODES = ("auto", "on", "off")
TORCH_COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
"""`TrainConfig.compile_mode`: torch.compile's `mode`. max-autotune-no-cudagraphs benchmarks
matmul and attention kernels while compiling (minutes more, worth it on long runs); CUDA graphs
stay off because the step's inputs (a new BlockMask, bucketed DPO shapes) change every step."""
ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")
"""`TrainConfig.attention`: the SDPA backend tried first. auto = cuDNN then flash on sm90+
(Hopper and later, where cuDNN's attention is the faster one), torch's own order elsewhere."""


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    precision: str = "auto"
    """See `TrainConfig.precision`; `with_precision` sets it from a training config."""

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype this runtime trains in, None for plain float32."""
        return resolve_precision(self.precision, self.device)

    def autocast(self):
        """Autocast in `autocast_dtype` on this device, or a no-op (float32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def with_precision(self, precision: str) -> "Runtime":
        """A copy of this runtime training in `precision` (same device and ranks)."""
        resolve_precision(precision, self.device)  # a bad value or an unsupported GPU fails here
        return dataclasses.replace(self, precision=precision)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_runtime(device: str | None = None) -> Runtime:
    """Runtime from the environment: torchrun's RANK/WORLD_SIZE/LOCAL_RANK if present, the
    device from `device` or $WIKIGPT_DEVICE, else CUDA when available, else CPU.
    $WIKIGPT_CPU_THREADS sets torch's intra-op threads on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    name = device or os.environ.get("WIKIGPT_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device(name)
        if os.environ.get("WIKIGPT_CPU_THREADS"):
            # On a shared or small CPU, one thread per process often beats OpenMP contention.
            torch.set_num_threads(int(os.environ["WIKIGPT_CPU_THREADS"]))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(device=dev, rank=rank, world_size=world, local_rank=local)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 or None (float32) for a precision setting on a device; see `TrainConfig.precision`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cuda = device.type == "cuda"
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    if cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision = \"bf16\" but {torch.cuda.get_device_name(device)} has no bf16 "
                         "support; set precision = \"fp32\" (or \"auto\")")
    return torch.bfloat16


def should_compile(mode: str, runtime: Runtime) -> bool:
    """Whether the training forward is compiled; see `TrainConfig.compile`."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    return mode == "on" or (mode == "auto" and runtime.is_cuda)


def compile_model(module: torch.nn.Module, mode: str) -> torch.nn.Module:
    """`torch.compile(module)` in `mode` (one of TORCH_COMPILE_MODES), with static shapes: each
    input shape gets its own graph (the DPO buckets, a fixed small set) instead of a dynamic one."""
    if mode not in TORCH_COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {', '.join(TORCH_COMPILE_MODES)}, got {mode!r}")
    return torch.compile(module, mode=mode, dynamic=False)


def sdpa_order(preference: str, device: torch.device) -> list[str]:
    """SDPA backends by priority for an `attention` preference on `device` ([] = torch's own
    order). An explicit choice comes first; the others stay behind it as fallbacks, so a shape
    or mask the chosen kernel refuses still runs."""
    if preference not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {preference!r}")
    if device.type != "cuda":
        return []
    if preference == "auto":
        hopper = torch.cuda.get_device_capability(device)[0] >= 9
        return ["cudnn", "flash", "efficient", "math"] if hopper else []
    return [preference] + [b for b in ("flash", "cudnn", "efficient", "math") if b != preference]


def attention_context(preference: str, device: torch.device):
    """A context in which SDPA tries the backends of `sdpa_order` in that order."""
    order = sdpa_order(preference, device)
    if not order:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
             "math": "MATH"}
    backends = [getattr(SDPBackend, names[b]) for b in order if hasattr(SDPBackend, names[b])]
    if "set_priority" in inspect.signature(sdpa_kernel).parameters:
        return sdpa_kernel(backends, set_priority=True)
    return sdpa_kernel(backends)  # an older torch: the set, in torch's own order


def wrap_ddp(module: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """`module` under DistributedDataParallel with no per-forward buffer broadcast: the only
    buffers are the RoPE tables, identical on every rank.

    The keyword changed across torch versions: newer DDP takes `forward_sync_buffers` and
    deprecates `broadcast_buffers`; older ones (torch 2.11 included) know only
    `broadcast_buffers`. The one this torch accepts is looked up, never assumed."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [runtime.device.index] if runtime.is_cuda else None
    return DDP(module, device_ids=device_ids, **{_ddp_no_buffer_sync_keyword(DDP): False})


def _ddp_no_buffer_sync_keyword(ddp_class) -> str:
    """`forward_sync_buffers` where DDP accepts it, else `broadcast_buffers` (every version)."""
    params = inspect.signature(ddp_class.__init__).parameters
    return "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on every matrix (>= 2-D): attention, MLP and the tied embedding/head;
    none on the 1-D RMSNorm gains.

    Decision: the gains start at 1 and set per-channel scale, so pulling them toward 0 only
    fights the normalisation. The tied embedding is decayed, as in GPT-2/nanoGPT whose recipe
    the course's reference curve (val PPL 13.8) was trained with; because it is also the
    output head, decay keeps the logit scale in check."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # shared tensors appear once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg, runtime: Runtime) -> torch.optim.AdamW:
    """AdamW (betas from cfg, default 0.9/0.95), fused kernel on CUDA."""
    extra = {"fused": True} if runtime.is_cuda else {}
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), **extra)
