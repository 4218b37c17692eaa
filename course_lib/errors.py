"""Exceptions that carry a message a learner can act on."""


class CourseError(Exception):
    """Base class: the message says what was wrong and how to fix it."""


class AssetError(CourseError):
    """A model, tokenizer or data file could not be found, fetched or verified."""


class DataError(CourseError):
    """The data set cannot be used as given (file, columns, labels, sizes)."""


class ConfigError(CourseError, ValueError):
    """A hyperparameter or option is out of range."""


class ModelFolderError(CourseError):
    """A folder is not a saved course model, or is not safe to load."""


class TrainingError(CourseError):
    """Training cannot go on (a NaN loss, out of GPU memory); the message says what to change."""


class TrainingInterrupted(CourseError):
    """Training was stopped by the user (Ctrl-C); the message says how to resume."""


class TrainingStopped(CourseError):
    """Training was stopped on purpose (the panel's Stop button); the best weights so far are kept."""
