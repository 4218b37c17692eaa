"""Helper library for the hands-on course "Fine-Tuning GPT Models", one concept per module.

The machine-learning core a chapter calls to fine-tune sits at the top: config, data, pairs,
chats, models, features, training, records, progress, metrics, generation, zero_shot, saving, plots,
pipeline (the document end to end, for every task), model_card, export (GGUF) and cli. `tasks/`
holds one plug-in of the pipeline per task (classify, generate, chat); `notebook/` the notebook
helpers (chapter set-up, widgets, exercises, figures, profiles, estimate); `runtime/` the
plumbing (offline assets, threads and CPU sharing, speed switches, processes, checkpoints).
Notebooks import from these modules explicitly.
"""

from course_lib.runtime.threads import apply_thread_policy

# Before any course module imports torch: libgomp reads its wait policy once, at import.
apply_thread_policy()

__version__ = "0.1.0"
