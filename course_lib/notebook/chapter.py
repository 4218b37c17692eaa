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
    print(f"Profile: {profile.name} | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | {torch.get_num_threads()} CPU threads"
          f"{' | CUDA: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}")
    if profile.name == "fast":
        print("The fast profile is a smoke-test size for CI: models train on a few hundred examples and "
              "barely learn. To learn from the course, use the default or workshop profile.")
    return profile
