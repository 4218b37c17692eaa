"""Speed settings that do not change what the model learns: threads, TF32, compile, int8 inference.

Each is here, not inside the training loop, so the loop stays readable; `prepare_backend` is
called once before training, `maybe_compile` wraps the model when asked, and `quantize_int8`
makes a smaller, faster copy of a trained model for CPU inference.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
from torch import nn
from transformers import PreTrainedModel


def usable_cores() -> int:
    """CPU cores this process may run on (a container or `taskset` can allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


_warned_busy = False


def busy_warning(load: float | None = None, cores: int | None = None) -> str | None:
    """A warning, once per process, when other programs already keep the CPU busy; else None.

    PyTorch's threads wait for each other at every step, so a core taken by something else
    slows all of them; course_lib.runtime.cpu_share gives such cores up during training, which still
    leaves the run slower than alone.
    """
    global _warned_busy
    if _warned_busy:
        return None
    if load is None:
        try:
            load = os.getloadavg()[0]  # processes wanting a core, averaged over the last minute
        except (AttributeError, OSError):  # Windows has no load average
            return None
    cores = cores or usable_cores()
    if load < cores + 1:
        return None
    _warned_busy = True
    return (f"The CPU is busy before training starts (load {load:.1f} on {cores} cores): training will use "
            "only the cores other programs leave free, so expect it to be slower (benchmarks/README.md, "
            "CPU contention). Close other notebooks' kernels or heavy programs if you can.")


def prepare_backend(device: torch.device) -> None:
    """Thread count on CPU, TF32 matrix maths on CUDA: free speed with no change to results' meaning."""
    cores = usable_cores()
    # More threads than cores makes every matrix multiply wait on the others (oversubscription).
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    if device.type == "cuda":
        # TF32 keeps float32's range with a 10-bit mantissa on Ampere+ tensor cores: ~free speed
        # for the parts autocast leaves in float32.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def bf16_is_fast(device: torch.device) -> bool:
    """True where bf16 matrix maths runs natively: CUDA, or a CPU with AVX512-BF16 or AMX.

    On such a CPU (AMD Zen 4/5, Intel Xeon since Cooper Lake) oneDNN multiplies bf16 matrices
    about three times as fast as float32 (benchmarks/README.md, "The ten-minute default"). Elsewhere
    (most Intel laptops, Apple silicon) bf16 is emulated and slower, so float32 stays.
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    cpu = torch.cpu  # these probes are private helpers of torch.cpu: absent means "not known fast"
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in probes)


def uses_bf16(device: torch.device, mixed_precision: bool) -> bool:
    """Whether a run asking for mixed precision computes in bf16 here: the one place that decides."""
    return mixed_precision and bf16_is_fast(device)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast where the hardware computes bf16 natively (see bf16_is_fast), else a no-op.

    Autocast runs the matrix multiplies in bf16 and keeps the weights, their gradients, the
    optimizer and the numerically delicate steps (softmax, norms, the loss) in float32.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, enabled))


def precision_note(device: torch.device, mixed_precision: bool) -> str:
    """One line saying which precision the matrix maths will use here, and how to change it."""
    if uses_bf16(device, mixed_precision):
        return f"Matrix maths in bf16 (autocast; native on this {device.type.upper()}); --fp32 turns it off."
    if mixed_precision:
        return f"Matrix maths in float32: this {device.type.upper()} has no native bf16."
    return "Matrix maths in float32 (asked for)."


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile the model when asked; the compiled module shares the original's weights."""
    if not enabled:
        return model
    # dynamic=True: dynamic padding gives every batch a new length, which would otherwise
    # trigger a recompilation per length.
    return torch.compile(model, dynamic=True)


def mask_can_be_dropped(model: nn.Module, device: torch.device, compiled: bool) -> bool:
    """True for a compiled causal transformers model on a GPU, where an end-padding mask costs speed.

    Under torch.compile transformers turns any attention mask into a full (batch, 1, T, T) one,
    and attention then does the work of non-causal attention (on an H100: 12.9 ms per GPT-2-small
    step against eager's 5.6). Without a mask the traced graph asks for the causal kernel (with
    torch >= 2.13; older torch builds the mask anyway). Eager runs keep the mask: there
    transformers already skips a mask of ones.
    """
    if device.type != "cuda" or not compiled:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # unwrap peft
    if not isinstance(base, PreTrainedModel):
        return False  # e.g. the cached-feature top blocks, which read the mask themselves
    flags = [m.is_causal for m in base.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return bool(flags) and all(flags)


def without_end_padding_mask(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without its attention mask when that mask only marks padding at the ends of rows.

    In a causal model a real token attends only to earlier positions, so padding after it never
    reaches it. Only the outputs at padded positions change, and nothing reads those: the
    classifier reads each row's last real token, the writer's loss ignores padded labels.
    The check runs on the host copy of the batch, so it costs the GPU no wait.
    """
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2 or mask.device.type != "cpu":
        return batch
    ends_only = bool(mask[:, 0].all()) and bool((mask[:, 1:] <= mask[:, :-1]).all())
    return {key: value for key, value in batch.items() if key != "attention_mask"} if ends_only else batch


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy with int8 weights in every Linear layer, for faster CPU inference (dynamic quantisation).

    Activations are quantised on the fly per batch, so no calibration data is needed. The copy
    runs on CPU only. It can cost a lot of accuracy (on the course's fine-tuned SmolLM2:
    0.858 -> 0.668 on 400 validation reviews), so compare it with the original before using it.
    """
    quantized = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        # PyTorch marks its built-in quantisation as deprecated in favour of the separate
        # torchao package; the built-in one still works and needs no extra install.
        warnings.simplefilter("ignore")
        # One scale per output channel keeps more precision than one per weight matrix.
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        return torch.ao.quantization.quantize_dynamic(quantized, {nn.Linear: qconfig})
