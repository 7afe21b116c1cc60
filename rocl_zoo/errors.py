"""Errors meant for users: each message says what went wrong and what to do about it."""


class RoclZooError(Exception):
    """Base class of every error rocl_zoo raises on purpose."""


class ModelNotFoundError(RoclZooError, KeyError):
    """An architecture or zoo name that does not exist."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(RoclZooError):
    """A zoo entry whose weights are not published yet."""


class IntegrityError(RoclZooError):
    """A weights or config file that is missing, truncated, corrupt or fails its checksum."""


class ExportError(IntegrityError):
    """An export that failed its own verification (ONNX Runtime against PyTorch, the reloaded folder); nothing was
    written."""


class DataError(RoclZooError):
    """A dataset that cannot be found, read or used."""


class ConfigError(RoclZooError, ValueError):
    """A bad argument or setting."""


class InputMismatchWarning(UserWarning):
    """An image far from what the model was trained on (colour into a grey model, a large photo shrunk to a
    thumbnail, a light background where the training images have a dark one): its prediction means little."""
