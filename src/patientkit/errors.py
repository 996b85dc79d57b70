"""The one error tree of patientkit.

    PatientkitError            exit 1 unless a subclass says otherwise
    ├── UsageError             exit 2: a bad flag, an unreadable file, a bad setting
    ├── RemoteError            exit 2: a server that cannot be reached or answers nonsense
    ├── InputError             exit 1: invalid data in an input, named by file and line
    └── DeliveryError          exit 1: data that could not be delivered after retries

The CLI catches PatientkitError in one place and prints its message as one line.
Core modules raise these too; they know nothing of the CLI.
"""


class PatientkitError(Exception):
    """Base of every error patientkit raises on purpose."""

    exit_code = 1


class UsageError(PatientkitError):
    exit_code = 2


class RemoteError(PatientkitError):
    exit_code = 2


class InputError(PatientkitError):
    exit_code = 1


class DeliveryError(PatientkitError):
    exit_code = 1
