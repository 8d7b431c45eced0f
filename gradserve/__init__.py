"""gradserve's Python client and command line (``gradserve.client``, ``gradserve.cli``).

Imports nothing from the server side (``service``); ``gradserve grad --local`` is the one
place that runs the engine in-process, imported lazily.
"""

from gradserve.client import Client, Gradients, MLPGradients
from gradserve.errors import (
    APIError,
    ConnectionFailed,
    GradserveError,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
)

__all__ = ["APIError", "Client", "ConnectionFailed", "Gradients", "GradserveError",
           "MLPGradients", "NotFound", "ServiceUnavailable", "Unprocessable"]
