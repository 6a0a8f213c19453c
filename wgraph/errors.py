"""Every error wgraph raises on bad input derives from :class:`WgraphError`."""

from __future__ import annotations


class WgraphError(Exception):
    """Base class of all wgraph errors."""


class UnsupportedOperation(WgraphError):
    """A module, op or tensor manipulation the converter has no exact rule for."""


class ConversionError(WgraphError):
    """The model could not be traced or run on the example input."""


class StateDictError(WgraphError):
    """A state dict does not match the architecture (missing, extra or mis-shaped keys)."""


class IncompatibleBatchError(WgraphError):
    """Checkpoints of one batch disagree in dtype or device, or graphs of different layouts."""


class SpecError(WgraphError):
    """A model SPEC on the command line (``torchvision:NAME`` / ``module:factory``) does not resolve."""


class FileFormatError(WgraphError):
    """A file could not be read or written (missing directory, not a wgraph file, ...)."""


class ZooError(WgraphError):
    """A model zoo directory is missing, incomplete, corrupted, or does not match its manifest."""


class TaskError(WgraphError):
    """An unknown task, a zoo without the task's columns, or a split that cannot be made."""


class ConfigError(WgraphError):
    """A bad configuration (a model preset, a training or zoo setting): an unknown key, a wrong type,
    an unknown choice or a value out of range. The message names the key."""


class MissingDependency(WgraphError):
    """An optional package that a feature needs is not installed; the message names it."""
