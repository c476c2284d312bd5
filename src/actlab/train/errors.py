"""The user-facing error of training: bad configs, data, checkpoints or resumes (CLI: one line, exit 2)."""

from actlab.errors import ActlabError


class TrainError(ActlabError):
    """A training config, corpus, checkpoint or resume that cannot work; the message says what to fix."""
