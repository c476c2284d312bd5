"""Built-in objective handlers; importing this package registers them (see ``objective.register_objective``)."""

from actlab.train.objectives import dense  # noqa: F401
