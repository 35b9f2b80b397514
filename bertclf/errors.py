"""Exceptions for mistakes a user can fix; the command lines turn them into exit status 2."""


class UserError(Exception):
    """Bad input or configuration: the message says what was wrong and how to fix it."""


class DataError(UserError):
    """A dataset path, file or archive that cannot be loaded."""


class EncoderError(UserError):
    """An unknown encoder name or an encoder handle that cannot be loaded."""


class TrainingError(RuntimeError):
    """Training could not finish, e.g. the loss became NaN."""
