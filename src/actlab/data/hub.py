"""Corpora from the Hugging Face hub through ``datasets`` (optional dependency, imported on use).

Spec: ``hf:<name>[:<config>][:<split>]``. With one part after the name it is the config; to give a split without
a config leave the config empty: ``hf:<name>::<split>``. The split may carry a slice, colons included, e.g.
``hf:wikitext:wikitext-2-raw-v1:train[:10%]`` (everything after the second colon is the split). Prefer a slice
for large datasets: the whole split is downloaded otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actlab.data.base import Corpus, CorpusError

DEFAULT_SPLIT = "train"


@dataclass(frozen=True)
class HubSpec:
    """A parsed ``hf:`` corpus spec.

    Example:
        >>> HubSpec.parse("hf:wikitext:wikitext-2-raw-v1:test")
        HubSpec(name='wikitext', config='wikitext-2-raw-v1', split='test')
        >>> HubSpec.parse("hf:org/data::validation")
        HubSpec(name='org/data', config=None, split='validation')
    """

    name: str
    config: str | None = None
    split: str = DEFAULT_SPLIT

    @classmethod
    def parse(cls, spec: str) -> HubSpec:
        if not spec.startswith("hf:"):
            raise CorpusError(f"not a hub corpus spec: {spec!r}; write hf:<name>[:<config>][:<split>]")
        parts = spec[3:].split(":", 2)
        name = parts[0].strip()
        if not name:
            raise CorpusError(
                f"hub corpus spec {spec!r} has no dataset name; write hf:<name>[:<config>][:<split>]"
            )
        config = parts[1].strip() if len(parts) > 1 and parts[1].strip() else None
        split = parts[2].strip() if len(parts) > 2 and parts[2].strip() else DEFAULT_SPLIT
        return cls(name=name, config=config, split=split)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            "hf: corpora need the 'datasets' package: pip install datasets (or pip install 'actlab[hub]')"
        ) from None
    return datasets


def pick_text_field(columns: dict[str, Any], wanted: str | None) -> str:
    """The text column: ``wanted`` if given, else ``text``, else the first string column.

    ``columns`` maps column names to ``datasets`` feature types (``Value('string')`` has ``dtype == 'string'``).

    Example:
        >>> class V:
        ...     def __init__(self, dtype): self.dtype = dtype
        >>> pick_text_field({"id": V("int64"), "body": V("string")}, None)
        'body'
    """
    if wanted is not None:
        if wanted not in columns:
            raise CorpusError(
                f"dataset has no column {wanted!r} (columns: {', '.join(columns)}); pick another"
            )
        return wanted
    if "text" in columns:
        return "text"
    for name, feature in columns.items():
        if getattr(feature, "dtype", None) in ("string", "large_string"):
            return name
    raise CorpusError(
        f"dataset has no string column (columns: {', '.join(columns)}); name one with the field argument"
    )


def load_hub_corpus(spec: str, field: str | None = None) -> Corpus:
    """Load a dataset split with ``datasets.load_dataset`` and take one string column as documents.

    Example:
        >>> load_hub_corpus("hf:wikitext:wikitext-2-raw-v1:test")  # doctest: +SKIP
    """
    hub = HubSpec.parse(spec)
    datasets = _import_datasets()
    try:
        ds = datasets.load_dataset(hub.name, hub.config, split=hub.split)
    except Exception as exc:  # datasets raises many types (network, missing config, bad split)
        raise CorpusError(
            f"could not load {spec!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
            "check the name/config/split (and network access)"
        ) from exc
    column = pick_text_field(dict(ds.features), field)
    docs = [t for t in ds[column] if isinstance(t, str)]
    return Corpus.from_documents(
        spec, docs, kind="hf", dataset=hub.name, config=hub.config, split=hub.split, field=column
    )
