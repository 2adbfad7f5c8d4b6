"""User-facing errors: each subclass maps to one CLI exit code.

This module imports nothing of lowbit, so `lowbit.runtime` can depend on it while staying free
of torch and brevitas.
"""


class LowbitError(Exception):
    """A mistake the user can fix; the message names the file, node or field at fault."""

    exit_code = 2


class ConfigError(LowbitError):
    """A bad recipe, option or run directory."""

    exit_code = 3


class DataError(LowbitError):
    """A data set, image or mask that cannot be used."""

    exit_code = 4


class ModelFileError(LowbitError):
    """An ONNX model, checkpoint or model.json that cannot be loaded."""

    exit_code = 5


class InputError(LowbitError):
    """An input tensor the runtime cannot run (dtype, shape, NaN/Inf)."""

    exit_code = 6


class VerifyError(LowbitError):
    """Verification found unexplained mismatches."""

    exit_code = 7
