"""Data parallelism through Hugging Face Accelerate: the same loop in N processes, a shard of data each.

Started with `accelerate launch --multi_gpu --num_processes N -m course_lib finetune ...` (or
`./run finetune --processes N`), every process runs the whole program. Accelerate tells each
one who it is, wraps the model in DistributedDataParallel (DDP: after every backward pass the
gradients are averaged over the processes, so every copy takes the same step), shards the
batches and gathers tensors back for metrics.

Run without a launcher there is one process, no Accelerator is created and every method below
is a plain pass-through, so a single run behaves exactly as before. (Creating an Accelerator in
a notebook kernel would also stop `notebook_launcher` from starting processes later.)
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Sized
from contextlib import nullcontext

import torch
import transformers
from accelerate import Accelerator, notebook_launcher
from accelerate.data_loader import BatchSamplerShard
from accelerate.utils import gather_object
from torch import nn

from course_lib.errors import ConfigError

_ACCELERATOR: Accelerator | None = None  # one per process, created the first time it is needed


def launched_processes() -> int:
    """How many processes the launcher (accelerate launch, torchrun, notebook_launcher) started."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class Parallel:
    """What the loop asks of data parallelism; with no accelerator, one process and no-ops."""

    def __init__(self, accelerator: Accelerator | None = None):
        self.accelerator = accelerator

    @classmethod
    def current(cls) -> Parallel:
        """The Accelerator of a launched multi-process run, or the single-process stand-in."""
        global _ACCELERATOR
        if launched_processes() <= 1:
            return cls(None)
        _refuse_sharded_models()
        if _ACCELERATOR is None:
            # cpu=True without GPUs: the processes talk through gloo over local sockets.
            _ACCELERATOR = Accelerator(cpu=not torch.cuda.is_available())
            if not _ACCELERATOR.is_main_process:
                transformers.logging.set_verbosity_error()  # one copy of each loading report
        return cls(_ACCELERATOR)

    @property
    def num_processes(self) -> int:
        """Processes taking part (1 without a launcher)."""
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def process_index(self) -> int:
        """This process's rank: 0 is the main process."""
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def is_main_process(self) -> bool:
        """Only the main process prints, saves checkpoints and writes the output folder."""
        return self.process_index == 0

    def device(self, default: torch.device) -> torch.device:
        """This process's device: with several GPUs each process has its own (cuda:0, cuda:1, ...)."""
        return self.accelerator.device if self.accelerator else default

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The module to call in training: DDP-wrapped with several processes, else the model itself."""
        if self.accelerator is None:
            return model
        # device_placement=False: the loop has already put the model on this process's device.
        return self.accelerator.prepare_model(model, device_placement=False)

    def no_sync(self, model: nn.Module, sync: bool):
        """Skip DDP's gradient averaging on accumulation steps that do not update the weights."""
        if self.accelerator is None or sync:
            return nullcontext()
        return self.accelerator.no_sync(model)

    def shard(self, batches: Iterable[list[int]]) -> Iterable[list[int]]:
        """This process's share of a batch sampler: batch k of every N goes to process k mod N.

        even_batches: every process gets the same number of full batches (the last ones are
        completed with examples from the start), so no process waits forever for the others.
        """
        if self.accelerator is None:
            return batches
        return BatchSamplerShard(batches, self.num_processes, self.process_index,
                                 split_batches=False, even_batches=True)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over the processes (the logged loss is the whole step's)."""
        return value if self.accelerator is None else self.accelerator.reduce(value, "mean")

    def any(self, flag: bool) -> bool:
        """True in every process if `flag` is True in any: a decision all processes must take at the same step."""
        if self.accelerator is None:
            return flag
        return bool(self.accelerator.reduce(torch.tensor(float(flag), device=self.accelerator.device), "sum") > 0)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate this step's tensor from every process, in process order."""
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, items: list) -> list:
        """Every process's list of picklable items, concatenated in process order (e.g. generated texts)."""
        return items if self.accelerator is None else gather_object(items)

    def wait_for_everyone(self) -> None:
        """A barrier: e.g. nobody reads a checkpoint before the main process has written it."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def end_processes() -> None:
    """Close this process's process group at the end of a launched run (a no-op in one process).

    Every process calls it once its collectives are over. Left open, gloo's worker threads are
    still alive while Python shuts down, and a process can abort at exit ("terminate called
    without an active exception") after a run that succeeded, failing the whole launch.
    """
    global _ACCELERATOR
    if _ACCELERATOR is not None:
        _ACCELERATOR.end_training()  # destroys the process group (and ends any trackers)
        _ACCELERATOR = None


def _refuse_sharded_models() -> None:
    """The course's loop is data parallel (DDP) only: say so before an FSDP or DeepSpeed run starts.

    FSDP and DeepSpeed split each weight across processes; the loop's best-weights copy, its
    checkpoints and its saving read whole weights in the main process, which would be wrong.
    """
    for name, variable in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(variable, "false").lower() == "true":
            raise ConfigError(
                f"course_lib's finetune runs data parallel (DDP) only, not {name}: launch it without "
                f"the {name} config (see README, Scaling out), or use {name} with your own loop as "
                "in chapter 10."
            )


def _sampler(loader: object) -> object | None:
    """The sampler under a loader's (possibly sharded) batches: what orders and counts its examples."""
    batches = getattr(loader, "batch_sampler", None)
    if isinstance(batches, BatchSamplerShard):
        batches = batches.batch_sampler
    return getattr(batches, "sampler", None)


def examples_in(loader: object) -> int:
    """How many distinct examples a (possibly sharded) loader covers in one pass over all processes."""
    sampler = _sampler(loader)
    return len(sampler) if isinstance(sampler, Sized) else len(loader.dataset)


def data_order_generator(loader: object) -> torch.Generator | None:
    """The random generator that orders a loader's training batches (saved in checkpoints)."""
    generator = getattr(_sampler(loader), "generator", None)
    return generator if isinstance(generator, torch.Generator) else None


def run_in_processes(function: Callable[..., None], args: tuple, processes: int) -> None:
    """Run function(*args) in `processes` fresh processes, from a notebook or a script.

    Several go through Accelerate's notebook_launcher; a single one runs in one forked process
    rather than in the kernel itself, because notebook_launcher refuses to start processes once
    the kernel holds an Accelerator.
    """
    if processes > 1:
        notebook_launcher(function, args, num_processes=processes)
        return
    child = multiprocessing.get_context("fork").Process(target=function, args=args)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"The run failed in its process (exit code {child.exitcode}); its error is above.")
