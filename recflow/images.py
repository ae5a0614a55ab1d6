"""The container images recflow builds, named once in ``recflow/images.yaml``.

The compiled pipeline (``components.PIPELINE_IMAGE``), the Helm chart (through
a symlink to the same file), ``make images`` and the kind scripts all read that
file, so the image the Dockerfile builds is the image every consumer names.
"""

from __future__ import annotations

from pathlib import Path

import yaml

IMAGES_FILE = Path(__file__).with_name("images.yaml")


def images() -> dict[str, str]:
    """``{"pipeline": "repo:tag", "serving": "repo:tag"}`` as the file says."""
    return yaml.safe_load(IMAGES_FILE.read_text())


def image(name: str) -> str:
    """The reference (``repository:tag``) of one image; ``KeyError`` names the known ones."""
    known = images()
    if name not in known:
        raise KeyError(f"no image {name!r} in {IMAGES_FILE}; known: {sorted(known)}")
    return known[name]
