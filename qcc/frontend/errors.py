"""The frontend's one error type."""
from __future__ import annotations


class FrontendError(Exception):
    """A model that cannot be imported; the message is one line saying why and what to do."""
