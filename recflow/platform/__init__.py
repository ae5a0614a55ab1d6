"""The local platform: HAProxy, Prometheus and the recflow servers on loopback, supervised.

``recflow up`` / ``status`` / ``down`` (:mod:`recflow.platform.commands`),
the supervisor that owns the processes (:mod:`recflow.platform.supervisor`),
and the local backend of the rollout controller (:mod:`recflow.platform.rollout`).
"""
