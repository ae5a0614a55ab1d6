"""The model server's entrypoint, the container's command and ``recflow serve``'s body.

    python -m serving --bundle /mnt/models --feature-repo /feature_repo --port 8080

On a cluster, KServe's storage initializer downloads the InferenceService's
``storageUri`` into ``/mnt/models`` before this starts; locally ``--bundle``
is a directory (or ``file://`` URI), by default the workspace's blessed model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from serving.affinity import cpu_list
from serving.config import ServingConfig

DEFAULT_WORKSPACE = ".recflow"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundle",
        help="model bundle directory or file:// URI (default: the workspace's current blessed model)",
    )
    parser.add_argument("--workspace", default=DEFAULT_WORKSPACE, help=f"default: {DEFAULT_WORKSPACE}")
    parser.add_argument(
        "--feature-repo", help="Feast repo to read online features from (default: <workspace>/feature_repo)"
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("HTTP_PORT", 8080)))
    parser.add_argument("--config", help="serving settings (YAML, see serving/config.py)")
    stand_in = parser.add_mutually_exclusive_group()
    stand_in.add_argument(
        "--noop", action="store_true", help="serve the no-op model instead (the benchmark's latency floor)"
    )
    stand_in.add_argument(
        "--request-path",
        action="store_true",
        help="serve the recommender's request path with fixed answers, no features or stages (a benchmark row)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (off: metrics carry latencies)")
    parser.add_argument(
        "--cpus",
        type=cpu_list,
        help="run the server's threads on these CPUs only, e.g. 0 or 0-1 (default: wherever the OS puts them)",
    )


def resolve_bundle(bundle: str | None, workspace: str | Path) -> Path:
    """The bundle directory: a path, a ``file://`` URI, or the registry's current model."""
    if bundle is None:
        from recflow.pipeline.registry import ModelRegistry

        current = ModelRegistry(Path(workspace) / "models").current()
        if current is None:
            raise SystemExit(f"no blessed model in {workspace}/models: run `recflow pipeline run` or pass --bundle")
        return Path(current["path"])
    parsed = urlparse(bundle)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else bundle)
    raise SystemExit(
        f"--bundle {bundle}: {parsed.scheme}:// is fetched by KServe's storage initializer on the cluster "
        "(the InferenceService's storageUri lands in /mnt/models); locally pass a directory"
    )


def run(args: argparse.Namespace) -> None:
    # kserve parses the process's command line for its own flags when first
    # imported, and would read ours (--config) as abbreviations of them.
    sys.argv = sys.argv[:1]
    if args.cpus:
        from serving.affinity import pin

        try:
            pin(args.cpus)  # before any thread starts: they inherit it
        except ValueError as error:
            raise SystemExit(f"--cpus: {error}") from None
    from serving.model import NoOpModel, RecommenderModel, RequestPathModel
    from serving.server import serve

    config = ServingConfig.from_file(args.config) if args.config else ServingConfig()
    if args.noop:
        model = NoOpModel()
    elif args.request_path:
        model = RequestPathModel(config)
    else:
        bundle = resolve_bundle(args.bundle, args.workspace)
        feature_repo = Path(args.feature_repo) if args.feature_repo else Path(args.workspace) / "feature_repo"
        if not (feature_repo / "feature_store.yaml").is_file():
            raise SystemExit(f"no Feast repo at {feature_repo} (feature_store.yaml missing): pass --feature-repo")
        model = RecommenderModel(bundle, feature_repo, config)
    model.load()
    serve([model], args.port, access_log=args.access_log)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
