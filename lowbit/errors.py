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


class WriteError(LowbitError):
    """An output that cannot be written: no space, no permission, a read-only file system, a
    path whose parent is a file or whose name is too long."""

    exit_code = 8

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(path, reason)  # both in args: the error pickles (distributed.launch)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"{self.path}: cannot write: {self.reason}"


class BusyError(LowbitError):
    """Another process is writing the same run or export folder."""

    exit_code = 9
