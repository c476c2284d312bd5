"""Plans as Hugging Face Hub artefacts: a model card beside the plan files, loading by repo id, uploading.

A plan directory written by :func:`save_pretrained` holds ``plan.json``, ``thresholds.safetensors`` and a
``README.md`` whose YAML header the Hub reads (``library_name: actlab``, tags, ``base_model`` when the plan
names a Hub model). Loading a local directory never touches the network; a repo id (``owner/name``) is
fetched with ``huggingface_hub`` (its cache, so a second load works offline too).

Example:
    >>> plan.save_pretrained("plans/teal50")                           # doctest: +SKIP
    >>> plan = SparsityPlan.from_pretrained("plans/teal50")            # doctest: +SKIP
    >>> plan.push_to_hub("me/smollm2-teal50")                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from actlab.sparsity.errors import PlanError
from actlab.sparsity.plan import PLAN_JSON, THRESHOLDS, SparsityPlan

CARD = "README.md"
#: the files a plan repository holds; nothing else is downloaded or uploaded
HUB_FILES = (PLAN_JSON, THRESHOLDS, CARD)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_repo_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hub repository id, ``owner/name``."""
    return bool(_REPO_ID.match(name))


def _pct(v: Any) -> str:
    return f"{100.0 * v:.1f}%" if isinstance(v, (int, float)) else "-"


#: the Hub model an embedded model was converted from (the card's ``base_model``; its weights are the GGUF's)
EMBEDDED_BASE = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def _base_model(plan: SparsityPlan) -> str | None:
    name = plan.calibration.get("model")
    if not isinstance(name, str):
        return None
    if name in EMBEDDED_BASE:
        return EMBEDDED_BASE[name]
    if is_repo_id(name) and not Path(name).expanduser().exists():
        return name
    return None


def model_card(plan: SparsityPlan, repo_id: str | None = None) -> str:
    """The ``README.md`` of a plan repository: what made the plan, how sparse it is, what it costs, how to use it.

    Example:
        >>> print(model_card(plan).splitlines()[0])                    # doctest: +SKIP
        ---
    """
    from actlab import __version__

    base = _base_model(plan)
    tags = ["actlab", "activation-sparsity", plan.method]
    head = ["---", "library_name: actlab", "tags:", *[f"- {t}" for t in tags]]
    if base:
        head.append(f"base_model: {base}")
    head.append("---")
    arch = plan.model.get("architecture", "model")
    m, cal = plan.metrics, plan.calibration
    rows = [("method", plan.method), ("allocation", str(getattr(plan.config, "allocation", "uniform"))),
            ("model-wide sparsity (calibration)", _pct(m.get("sparsity_model_wide"))),
            ("weight bytes skipped", _pct(m.get("bytes_skipped_frac"))),
            ("entries (sites)", str(len(plan.entries))),
            ("model", str(cal.get("model", arch))),
            ("architecture, layers", f"{arch}, {plan.model.get('num_layers', '-')}"),
            ("weights sha256 (sample)", f"`{str(plan.model.get('weights_sha256', '-'))[:16]}`"),
            ("calibration data", str(cal.get("data", "-"))), ("actlab", __version__)]
    search = plan.extra.get("search") if isinstance(plan.extra.get("search"), dict) else None
    if search and isinstance(search.get("ppl"), (int, float)) and isinstance(search.get("ppl_dense"), (int, float)):
        pct = 100.0 * (search["ppl"] / search["ppl_dense"] - 1.0) if search["ppl_dense"] > 0 else 0.0
        rows.append(("perplexity, held-out (dense -> sparse)",
                     f"{search['ppl_dense']:.3f} -> {search['ppl']:.3f} ({pct:+.2f}%)"))
    table = ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    config = json.dumps(plan.config.to_dict(), indent=2, sort_keys=True)
    load = cal["model"] if base else "MODEL"  # a card names a model only when it is the one calibrated on
    usage = ["```python", "import actlab", "from actlab import SparsityPlan", "",
             f'model, tok = actlab.load_model("{load}")',
             f'plan = SparsityPlan.from_pretrained("{repo_id or "path/to/this/plan"}")',
             "actlab.apply_(model, plan)  # refuses a model whose fingerprint differs", "```"]
    body = [f"# {plan.method} activation-sparsity plan for {base or arch}", "",
            "An [actlab](https://pypi.org/project/actlab/) sparsity plan: per-site thresholds that skip small "
            "activations (and the weight columns they multiply) at inference, calibrated without training.", "",
            *table, "", "## Use", "", *usage, "", "## Config", "", "```json", config, "```", ""]
    return "\n".join(head + [""] + body)


def save_pretrained(plan: SparsityPlan, out: str | os.PathLike, overwrite: bool = False,
                    repo_id: str | None = None) -> Path:
    """Write the plan and its model card into ``out``, atomically (all three files or none)."""
    from actlab.outputs import staged_output

    plan._check()
    card = model_card(plan, repo_id)
    with staged_output(out, overwrite=overwrite) as tmp:
        plan._write_into(tmp)
        (tmp / CARD).write_text(card)
    return Path(out)


def from_pretrained(repo_or_dir: str | os.PathLike, revision: str | None = None) -> SparsityPlan:
    """A plan from a local directory, or downloaded from Hub repository ``owner/name`` (``huggingface_hub``)."""
    path = Path(repo_or_dir).expanduser()
    if path.exists():
        if revision is not None:
            raise PlanError(f"{path} is a local directory: revision={revision!r} applies to Hub repositories only")
        return SparsityPlan.load(path)
    name = str(repo_or_dir)
    if not is_repo_id(name):
        raise PlanError(f"no plan directory {name!r}, and it is not a Hub repository id (owner/name): "
                        "pass a directory written by plan.save_pretrained() or `actlab calibrate`, or a repo id")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise PlanError(f"{name!r} is not a local directory and huggingface_hub is not installed: "
                        "pip install huggingface_hub, or pass a local plan directory") from e
    try:
        local = snapshot_download(name, revision=revision, allow_patterns=list(HUB_FILES))
    except Exception as e:  # offline, missing repo, missing revision, auth: all end in the same advice
        raise PlanError(f"no local directory {name!r}, and cannot fetch plan {name!r} from the Hub "
                        f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]}); check the path, or the repo "
                        "id and the network") from e
    return SparsityPlan.load(local)


def push_to_hub(plan: SparsityPlan, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload the plan files and card in one commit; returns the commit URL."""
    if not is_repo_id(repo_id):
        raise PlanError(f"repo id {repo_id!r} must look like owner/name")
    try:
        from huggingface_hub import HfApi
    except ImportError as e:
        raise PlanError("push_to_hub needs huggingface_hub: pip install huggingface_hub") from e
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="actlab-plan-") as tmp:
        folder = save_pretrained(plan, Path(tmp) / "plan", repo_id=repo_id)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=list(HUB_FILES),
                                 commit_message=commit_message or f"actlab {plan.method} sparsity plan")
    return str(getattr(info, "commit_url", info))
