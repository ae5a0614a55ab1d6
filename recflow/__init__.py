"""recflow: a Kubernetes-native recommender platform on Kubeflow."""

import typeguard

__version__ = "0.1.0"


def _without_import_time_instrumentation(target=None, **_):
    """``typeguard.typechecked`` as it is under ``python -O``: the decorated class or function, unchanged.

    Feast decorates its definition classes (``Entity``, ``FeatureView``,
    ``DataSource``...) with ``@typechecked``, which re-parses and recompiles
    every method when feast is imported: 2.5 to 3.4 of the 6 to 7 seconds
    ``import feast`` took here, paid by every process that reads features
    (each pipeline step, model server, the feedback service). typeguard
    means it for development and turns it off in optimized mode; recflow's
    processes turn it off the same way, before feast is imported (every
    import of feast in recflow goes through this package first). Feast is
    the only dependency that uses it, and none of its code depends on the
    checks (it never catches typeguard's errors); recflow writes the
    feature definitions itself, and its tests apply them.
    """
    if target is None:
        return lambda decorated: decorated
    return target


typeguard.typechecked = _without_import_time_instrumentation
