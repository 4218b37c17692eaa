"""What every chapter notebook does first: quiet logs, pick the profile, say where things are."""

from __future__ import annotations

import datasets
import torch
import transformers
from IPython import get_ipython

from course_lib.notebook.profiles import Profile, current_profile


def setup_chapter() -> Profile:
    """Silence library chatter, print the active profile, return it."""
    # Load reports and per-map progress bars would bury the lesson's own output.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    shell = get_ipython()
    if shell is not None:
        # Show matplotlib Figures returned by course_lib as images (no pyplot state needed).
        shell.run_line_magic("matplotlib", "inline")
    profile = current_profile()
    # Count GPUs without starting CUDA (device_count asks NVML where it can; get_device_name and is_available
    # start the driver): chapter 10 forks the kernel, and a fork cannot use CUDA its parent opened.
    gpus = torch.cuda.device_count()
    print(f"Profile: {profile.name} | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | {torch.get_num_threads()} CPU threads"
          f"{f' | CUDA: {gpus} GPU(s)' if gpus else ''}")
    if profile.name == "fast":
        print("The fast profile is a smoke-test size for CI: models train on a few hundred examples and "
              "barely learn. To learn from the course, use the default or workshop profile.")
    return profile
