"""Corpora and token windows.

- `actlab.data.corpus.load_corpus`: text file, directory, JSONL, ``hf:<name>``, or the built-in ``default``.
- `actlab.data.windows.make_windows` / `build_windows`: fixed-length token windows in disjoint splits.

Nothing is imported here so that ``import actlab.data`` stays free of torch and of side effects.
"""
