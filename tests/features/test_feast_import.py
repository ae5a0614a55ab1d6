"""Feast's definition classes, imported through recflow, are left as written: no typeguard instrumentation."""

from __future__ import annotations

import feast


def test_feast_imported_after_recflow_is_not_recompiled_by_typeguard():
    # This process imported feast after recflow (the session's conftest imports recflow first).
    # typeguard's recompiled methods look up typeguard._functions before anything else.
    classes = (feast.Entity, feast.FeatureView, feast.FeatureService, feast.FileSource, feast.OnDemandFeatureView)
    instrumented = [cls.__name__ for cls in classes if "typeguard" in cls.__init__.__code__.co_names]
    assert instrumented == []
