"""Helper library for the hands-on course "Fine-Tuning GPT Models".

Each module holds one concept of the course: assets (model, tokenizer and data, offline or from
the Hub), data, models, training, metrics, saving, plots, pipeline (the whole document end to
end) and cli. Notebooks import from these modules explicitly.
"""

from course_lib.threads import apply_thread_policy

# Before any course module imports torch: libgomp reads its wait policy once, at import.
apply_thread_policy()

__version__ = "0.1.0"
