"""What every chapter notebook does first: quiet logs, pick the profile, say where things are."""

from __future__ import annotations

import datasets
import torch
import transformers

from course_lib.profiles import Profile, current_profile


def setup_chapter() -> Profile:
    """Silence library chatter, print the active profile, return it."""
    # Load reports and per-map progress bars would bury the lesson's own output.
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    profile = current_profile()
    print(f"Profile: {profile.name} | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | {torch.get_num_threads()} CPU threads"
          f"{' | CUDA: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}")
    return profile
