"""Built-in method handlers; importing this package registers them (see ``base.register_method``)."""

from actlab.sparsity.methods import cats, cett, chess, teal, topk, wina  # noqa: F401
