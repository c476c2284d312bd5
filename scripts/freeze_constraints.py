"""Write constraints.txt from the environment the suite just passed in.

Run it inside a venv made by ``bash scripts/install.sh --test --unpinned`` after ``.ci/run`` passed there, then
commit the new file: the README's install then gives exactly that set. torch, pip and the build tools are
left out (install.sh handles torch itself); releases that need a newer Python than 3.10 get a marker so that
3.10 users resolve the newest allowed release instead of failing.

Example:
    python scripts/freeze_constraints.py > constraints.txt
"""

from __future__ import annotations

import importlib.metadata as md
import sys

from packaging.specifiers import SpecifierSet

SKIP = {"actlab", "torch", "pip", "setuptools", "wheel"}
OLDEST = "3.10.99"  # the oldest Python pyproject allows, as a version every 3.10.x release passes

HEADER = """\
# Exact versions tested together (Python {py}, torch {torch} CPU): scripts/install.sh installs with
# `pip install -c constraints.txt` so the README's commands give what CI tested. torch is not listed:
# install.sh installs 2.13.0 only where no torch is present, and leaves a CUDA build alone.
# Releases that need Python >= 3.11 are pinned only there; on 3.10 pip picks the newest allowed.
# Regenerate after a tested upgrade: see scripts/freeze_constraints.py."""


def main() -> None:
    rows: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name.lower() in SKIP:
            continue
        needs = (dist.metadata.get("Requires-Python") or "").replace(" ", "")
        marker = '; python_version >= "3.11"' if needs and not SpecifierSet(needs).contains(OLDEST) else ""
        rows[name.lower()] = f"{name}=={dist.version}{marker}"
    py = ".".join(map(str, sys.version_info[:2]))
    print(HEADER.format(py=py, torch=md.version("torch").split("+")[0]))
    print("\n".join(rows[k] for k in sorted(rows)))


if __name__ == "__main__":
    main()
