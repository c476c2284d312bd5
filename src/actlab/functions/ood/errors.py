"""The user-facing error of the OOD scores: bad features, labels, heads or detector configs."""

from actlab.errors import ActlabError


class OODError(ActlabError):
    """OOD features, labels, a head or a detector config that cannot work; the message says what to fix."""
