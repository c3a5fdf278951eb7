"""Exceptions the package raises on bad input; each message names the file, key or value at fault."""


class Clip4strError(Exception):
    """Base class of the package's own errors."""


class CheckpointError(Clip4strError, ValueError):
    """A weights file is unreadable, of an unknown format, or does not fit the model (keys, shapes)."""


class ImageReadError(Clip4strError, OSError):
    """An image file is missing, unreadable or not an image."""


class DatasetError(Clip4strError, ValueError):
    """A dataset path is missing, empty or malformed."""


class ModelNotFoundError(Clip4strError, FileNotFoundError):
    """A model name or path cannot be resolved (unknown name, offline without a cached file)."""


class WriteError(Clip4strError, OSError):
    """Saving a file failed (e.g. a full disk); the message says that the previous file is intact."""


class OutputError(Clip4strError, ValueError):
    """An output path would write over an input, a model or ground-truth file, or a file this run did not
    create (without ``--overwrite``), or it cannot be written (see :class:`clip4str.files.OutputGuard`)."""
