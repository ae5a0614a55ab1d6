"""Each component's README lists exactly the component's inputs and outputs, in order."""

import importlib
import re
from pathlib import Path

import pytest

COMPONENTS = sorted(path.parent for path in (Path(__file__).resolve().parents[2] / "components").glob("*/component.py"))


@pytest.mark.parametrize("folder", COMPONENTS, ids=lambda folder: folder.name)
def test_readme_table_matches_the_component(folder):
    component = getattr(importlib.import_module(f"components.{folder.name}.component"), folder.name)
    spec = component.component_spec
    expected = [("in", name) for name in spec.inputs or {}] + [("out", name) for name in spec.outputs or {}]
    listed = re.findall(r"^\| (in|out) \| `([^`]+)` \|", (folder / "README.md").read_text(), re.M)
    assert listed == expected, f"{folder / 'README.md'} is out of date"
