"""Training-free activation sparsification: methods, allocation, plans, masking.

Layout (each file one job):

* ``config.py``: one dataclass per method + the registry (``config_from_dict`` resolves by name);
* ``methods/``: one handler per method, registered for its config (``methods/base.py`` holds the shared
  threshold machinery: scores ``|x_i| * w_i``, quantile tables, allocation);
* ``groups.py``: the units a plan thresholds (an input shared by linears, or a gated MLP's activation);
* ``collect.py``: the one dense calibration pass (bounded sample); ``fisher.py``: output sensitivities;
* ``allocate.py``: uniform, TEAL's block-wise greedy and the global (Fisher-damage) allocation;
* ``plan.py``: ``SparsityPlan`` (save/load, validation); ``apply.py``: ``apply_`` / ``remove_``;
* ``search.py``: quality targets (PPL-p%); ``metrics.py``: model-wide sparsity and bytes skipped.

The public names (``actlab.sparsify_``, ``actlab.apply_``, ``actlab.TealConfig``...) are exported lazily from
``actlab``; importing this package has no side effects.
"""
