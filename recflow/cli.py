"""The ``recflow`` command line: one entry point, ``--help`` on every command.

    recflow world generate --scale demo --out data/demo
    recflow data import-movielens ../shared/data/movielens-latest-small --out data/ml-small
    recflow data validate data/demo
    recflow pipeline run                 # the whole training pipeline, kfp.local
    recflow pipeline compile [--check]   # pipelines/training_pipeline.yaml
    recflow pipeline submit --host URL   # upload it to Kubeflow Pipelines and start a run
    recflow step <name> ...              # one pipeline step by hand (what each component runs)
    recflow train TRAINING_SET OUT       # the training entrypoint, through torchrun
    recflow serve [--bundle DIR] [--port P]   # the KServe recommender server (V1 and V2)
    recflow bench quality --data PATH    # benchmarks that print figures
    recflow bench train               # training samples/s, 1 vs 2 processes, time to the bar
    recflow bench materialize
    recflow bench serve                  # server latency and throughput against a no-op KServe floor
    recflow up | status | down           # the local platform: HAProxy, Prometheus, the model servers
    recflow rollout --candidate DIR      # canary rollout on it: steps, analysis, promote or roll back (--inject-fault)
    recflow rollout --candidate URI --cluster cluster.yaml   # the same on a cluster's InferenceService
    recflow simulate --rps R --duration S # the world's users through the proxy; clicks go to the feedback service
    recflow retrain [--watch]            # feedback folded into the data, pipeline, rollout (on drift with --watch)
    recflow demo                         # all of it, end to end, with a report (what `make run` runs)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

DEFAULT_WORKSPACE = ".recflow"


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Feast and ibis log every registry refresh at INFO.
    for noisy in ("feast", "ibis", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _print_json(payload) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))


# --- world and data --------------------------------------------------------------------------


def cmd_world_generate(args: argparse.Namespace) -> int:
    from recflow.data.world import world_config, write_world

    overrides = {"seed": args.seed}
    if args.days is not None:
        overrides["days"] = args.days
    if args.drift_start_day is not None:
        overrides["drift_start_day"] = args.drift_start_day
    if args.drift_strength is not None:
        overrides["drift_strength"] = args.drift_strength
    dataset = write_world(world_config(args.scale, **overrides), args.out, overwrite=args.overwrite)
    manifest = dataset.manifest
    print(f"wrote {manifest['num_events']} events, {manifest['num_users']} users, {manifest['num_items']} items to {dataset.path}")
    return 0


def cmd_import_movielens(args: argparse.Namespace) -> int:
    from recflow.data.movielens import import_movielens

    dataset = import_movielens(args.path, args.out, overwrite=args.overwrite)
    manifest = dataset.manifest
    print(f"imported {manifest['format']}: {manifest['num_events']} events, {manifest['num_users']} users, "
          f"{manifest['num_items']} items to {dataset.path}")  # fmt: skip
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    import tempfile

    from recflow.pipeline import steps

    with tempfile.TemporaryDirectory(prefix="recflow-validate-") as scratch:
        steps.ingest(args.source, Path(scratch) / "raw", seed=args.seed)
        report = Path(scratch) / "report.md"
        try:
            steps.validate(Path(scratch) / "raw", Path(scratch) / "dataset", report)
        finally:
            print(report.read_text())
    return 0


# --- pipeline --------------------------------------------------------------------------------


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    from recflow.pipeline.local import run_pipeline

    parameters = _parameters(args.protocol, args.param, data_source=args.data_source, seed=args.seed)
    outputs = run_pipeline(args.workspace, **parameters.model_dump())
    print(outputs.summary())
    return 0


def _parameters(protocol: str, assignments: list[str], **given):
    """Pipeline parameters for `protocol`, with the NAME=VALUE `assignments` on top (validated)."""
    from recflow.pipeline.parameters import parameters_for

    for assignment in assignments:
        name, _, value = assignment.partition("=")
        given[name] = _parse_value(value)
    return parameters_for(protocol, **given)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def cmd_pipeline_compile(args: argparse.Namespace) -> int:
    import filecmp
    import tempfile

    from recflow.pipeline.local import COMPILED_PIPELINE, compile_pipeline

    if not args.check:
        print(f"wrote {compile_pipeline(args.output or COMPILED_PIPELINE)}")
        return 0
    target = Path(args.output or COMPILED_PIPELINE)
    with tempfile.TemporaryDirectory() as scratch:
        fresh = compile_pipeline(Path(scratch) / target.name)
        if not target.exists() or not filecmp.cmp(fresh, target, shallow=False):
            print(f"{target} is stale: run `recflow pipeline compile` and commit the result", file=sys.stderr)
            return 1
    print(f"{target} is up to date")
    return 0


def cmd_pipeline_submit(args: argparse.Namespace) -> int:
    from recflow.kubernetes.submit import submit

    parameters = _parameters(args.protocol, args.param)
    submitted = submit(args.host, parameters, experiment=args.experiment, workspace=args.workspace,
                       run_name=args.run_name, namespace=args.namespace)  # fmt: skip
    print(f"run {submitted.run_id} started (pipeline {submitted.pipeline_id}, version {submitted.version_id})\n"
          f"{submitted.url}")  # fmt: skip
    return 0


# --- single steps ----------------------------------------------------------------------------


def cmd_step(args: argparse.Namespace) -> int:
    from recflow.pipeline import steps

    name = args.step
    if name == "ingest":
        result = steps.ingest(args.source, args.out, seed=args.seed)
    elif name == "validate":
        result = steps.validate(args.raw, args.out, args.report)
    elif name == "split":
        result = steps.split(args.dataset, args.out, args.protocol, args.test_days, args.start_date, args.end_date)
    elif name == "features":
        result = steps.compute_feature_tables(args.dataset, args.split, args.workspace)
    elif name == "materialize":
        result = steps.apply_and_materialize(args.dataset, args.workspace)
    elif name == "training-set":
        from recflow.features.training_set import TrainingSetConfig

        config = TrainingSetConfig.model_validate_json(args.config) if args.config else TrainingSetConfig()
        result = steps.training_set(args.dataset, args.split, args.workspace, args.out, config)
    elif name == "ranking-set":
        from recflow.features.training_set import TrainingSetConfig

        config = TrainingSetConfig.model_validate_json(args.config) if args.config else TrainingSetConfig(feature_service="ranking_v1")
        result = steps.ranking_set(args.dataset, args.split, args.workspace, args.model, args.out, config)
    elif name == "train-ranker":
        from recflow.ranking.model import RankerConfig

        config = RankerConfig.model_validate_json(args.config) if args.config else RankerConfig()
        result = steps.train_ranker(args.ranking_set, args.dataset, args.out, config)
    elif name == "evaluate":
        from recflow.evaluation.gate import GateConfig
        from recflow.pipeline.parameters import DEFAULT_GATE, depth_list

        gate = GateConfig.model_validate_json(args.gate or DEFAULT_GATE)
        depths = depth_list(args.candidate_depths)
        result = steps.evaluate(
            args.model, args.ranker, args.dataset, args.split, args.workspace, args.out, gate,
            k=args.k, candidate_depths=depths,
        )  # fmt: skip
        result = {"decision": result["decision"], "metrics": {n: r["metrics"] for n, r in result["results"].items()}}
    elif name == "export":
        result = steps.export_bundle(args.model, args.ranker, args.evaluation, args.dataset, args.workspace, args.out)
    else:  # argparse restricts the choices
        raise AssertionError(name)
    _print_json(result)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from recflow.pipeline import steps
    from recflow.training.config import TrainConfig

    config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    _print_json(steps.train(args.training_set, args.out, config, args.nproc_per_node))
    return 0


def cmd_bench_quality(args: argparse.Namespace) -> int:
    from benchmarks.quality import run

    parameters = _parameters(args.protocol, args.param, data_source=args.data)
    with _output_to_stderr():
        result = run(parameters, Path(args.workspace) if args.workspace else None)
    return _print_result(result, args.json)


def cmd_bench_train(args: argparse.Namespace) -> int:
    from benchmarks.training import run

    processes = [int(n) for n in args.nproc.split(",")]
    with _output_to_stderr():
        result = run(args.scale, Path(args.workspace), processes, args.max_epochs)
    return _print_result(result, args.json)


@contextlib.contextmanager
def _output_to_stderr():
    """Send what runs inside to standard error, subprocesses included.

    kfp.local, its task subprocesses and Feast's materialization print their
    progress on standard output; a benchmark's standard output holds only its
    result, so that ``--json`` can be piped.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _print_result(result: dict, as_json: bool) -> int:
    """A benchmark's result: the whole of it as JSON, or its printed table."""
    if as_json:
        _print_json(result)
    else:
        print(result["table"])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.__main__ import run

    run(args)
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from benchmarks.serve import default_server_cpus, run

    with _output_to_stderr():
        result = run(
            Path(args.workspace), args.bundle, concurrency=args.concurrency, seconds=args.seconds, users=args.users,
            freshness_trials=args.freshness_trials, rounds=args.rounds,
            server_cpus=None if args.unpinned else args.server_cpus or default_server_cpus(),
        )
    return _print_result(result, args.json)


def cmd_bench_materialize(args: argparse.Namespace) -> int:
    from benchmarks.materialize import run

    _print_json(run(args.scale, Path(args.workspace)))
    return 0


# --- local platform and rollouts ------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from recflow.platform.commands import describe_up, up
    from recflow.platform.config import PlatformConfig

    config = PlatformConfig.from_file(args.config) if args.config else PlatformConfig()
    print(describe_up(up(args.workspace, args.bundle, config)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from recflow.platform.commands import status

    healthy, report = status(args.workspace)
    print(report)
    return 0 if healthy else 1


def cmd_down(args: argparse.Namespace) -> int:
    from recflow.platform.commands import down

    print(down(args.workspace))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from recflow.feedback.simulator import SimulationConfig, describe
    from recflow.platform.commands import simulate

    config = SimulationConfig(
        rps=args.rps, duration_seconds=args.duration, k=args.k, day=args.day, drift_strength=args.drift_strength,
        seed=args.seed,
    )
    report = simulate(args.workspace, config, args.ground_truth)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(describe(report))
    return 0 if not report.errors and not report.events_unsent else 1


def cmd_rollout(args: argparse.Namespace) -> int:
    import yaml

    from recflow.platform.rollout import rollout
    from recflow.rollout.controller import RolloutConfig

    settings = {}
    if args.config:
        settings = yaml.safe_load(Path(args.config).read_text()) or {}
    if args.interval is not None:
        settings["interval_seconds"] = args.interval
    if args.steps is not None:
        settings.setdefault("analysis", {})["steps"] = [int(step) for step in args.steps.split(",")]
    config = RolloutConfig.model_validate(settings)
    if args.cluster:
        from recflow.kubernetes.rollout import ClusterRolloutConfig, rollout_with_report
        from recflow.platform.state import platform_directory

        if args.inject_fault:
            raise ValueError("--inject-fault drills run on the local platform: leave out --cluster")
        cluster = ClusterRolloutConfig.model_validate(yaml.safe_load(Path(args.cluster).read_text()) or {})
        if args.workspace_volume and not Path(args.workspace_volume).is_dir():
            raise FileNotFoundError(f"--workspace-volume {args.workspace_volume}: no such directory")
        result, report = rollout_with_report(
            platform_directory(args.workspace), args.candidate, cluster, config, args.report, args.workspace_volume
        )
    else:
        if args.workspace_volume:
            raise ValueError("--workspace-volume is where a cluster's workspace volume is mounted: it goes with --cluster")
        result, report = rollout(args.workspace, args.candidate, config, args.report, args.inject_fault)
    print(f"{result.outcome}: {result.reason}\nreport: {report}\ndecisions: {result.log_path}")
    return 0 if result.outcome == "promoted" else 1


def cmd_retrain(args: argparse.Namespace) -> int:
    import threading

    import yaml

    from recflow.pipeline.retrain import RetrainConfig, retrain, watch

    settings = (yaml.safe_load(Path(args.config).read_text()) or {}) if args.config else {}
    config = RetrainConfig.model_validate(settings)
    if not args.watch:
        result = retrain(args.workspace, config, reason="by hand")
        print(result.summary())
        return 0 if result.rollout is None or result.rollout.outcome == "promoted" else 1
    stop = threading.Event()
    try:
        watch(args.workspace, config, stop, keep_going=True)
    except KeyboardInterrupt:
        stop.set()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import yaml

    from recflow.platform.demo import DemoConfig, run_demo

    settings = (yaml.safe_load(Path(args.config).read_text()) or {}) if args.config else {}
    report = run_demo(args.workspace, DemoConfig.model_validate(settings))
    print(report.summary())
    return 0 if report.failed_requests == 0 else 1


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from recflow.pipeline.parameters import DEFAULTS

    parser = argparse.ArgumentParser(prog="recflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    world = commands.add_parser("world", help="the synthetic world").add_subparsers(dest="world_command", required=True)
    generate = world.add_parser("generate", help="generate a seeded synthetic world (events, items, users, ground truth)")
    generate.add_argument("--scale", default="demo", help="tiny | demo | bench (default: demo)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--days", type=int, help="override the scale's number of days")
    generate.add_argument("--drift-start-day", type=int, help="day from which tastes drift")
    generate.add_argument("--drift-strength", type=float, help="0..1: how far tastes move")
    generate.add_argument("--out", required=True, help="dataset directory to write")
    generate.add_argument("--overwrite", action="store_true")
    generate.set_defaults(handler=cmd_world_generate)

    data = commands.add_parser("data", help="import and validate data").add_subparsers(dest="data_command", required=True)
    movielens = data.add_parser("import-movielens", help="ml-100k u.data, ml-1m ratings.dat or ml-latest(-small) ratings.csv")
    movielens.add_argument("path", help="the ratings file or the directory holding it")
    movielens.add_argument("--out", required=True, help="dataset directory to write")
    movielens.add_argument("--overwrite", action="store_true")
    movielens.set_defaults(handler=cmd_import_movielens)
    validate = data.add_parser("validate", help="validate a source and print the report (exit 1 on problems)")
    validate.add_argument("source", help="world:<scale>, a MovieLens path or a dataset directory")
    validate.add_argument("--seed", type=int, default=0)
    validate.set_defaults(handler=cmd_validate)

    pipeline = commands.add_parser("pipeline", help="the KFP training pipeline").add_subparsers(dest="pipeline_command", required=True)
    run = pipeline.add_parser("run", help="run the whole pipeline locally with kfp.local")
    run.add_argument("--workspace", default=DEFAULT_WORKSPACE, help=f"feature store, models and runs (default: {DEFAULT_WORKSPACE})")
    run.add_argument("--data-source", default="world:demo", help="world:<scale>, a MovieLens path or a dataset directory")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--protocol", default="time", choices=["time", "stratified"],
                     help="evaluation split; stratified also applies that protocol's model settings "
                          "(recflow/pipeline/parameters.py, STRATIFIED_SETTINGS)")  # fmt: skip
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="any other pipeline parameter, e.g. --param epochs=3 (see recflow/pipeline/parameters.py)")  # fmt: skip
    run.set_defaults(handler=cmd_pipeline_run)
    compile_ = pipeline.add_parser("compile", help="write the compiled pipeline YAML (checked into pipelines/)")
    compile_.add_argument("--output", help="default: pipelines/training_pipeline.yaml")
    compile_.add_argument("--check", action="store_true", help="fail if the checked-in YAML is stale")
    compile_.set_defaults(handler=cmd_pipeline_compile)
    submit = pipeline.add_parser("submit", help="upload the pipeline to Kubeflow Pipelines and start a run (kfp.Client)")
    submit.add_argument("--host", required=True, help="the KFP API/UI address, e.g. http://localhost:8081")
    submit.add_argument("--experiment", default="recflow", help="experiment to run in (created if missing; default: recflow)")
    submit.add_argument("--protocol", default="time", choices=["time", "stratified"],
                        help="evaluation split; stratified also applies that protocol's model settings")  # fmt: skip
    submit.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="any other pipeline parameter, e.g. --param epochs=3 (see recflow/pipeline/parameters.py)")  # fmt: skip
    submit.add_argument("--workspace",
                        help="the workspace path in the pods (default: where they mount the workspace volume, /recflow/workspace)")  # fmt: skip
    submit.add_argument("--run-name", help="default: recflow-training-<UTC time>")
    submit.add_argument("--namespace", help="the user namespace of a multi-user Kubeflow (default: none)")
    submit.set_defaults(handler=cmd_pipeline_submit)

    step_parser = commands.add_parser("step", help="run one pipeline step by hand (what each component runs)")
    step_parser.set_defaults(handler=cmd_step)
    step = step_parser.add_subparsers(dest="step", required=True)
    ingest = step.add_parser("ingest", help="bring a source in as raw tables")
    ingest.add_argument("source")
    ingest.add_argument("out")
    ingest.add_argument("--seed", type=int, default=0)
    validate_step = step.add_parser("validate", help="validate raw tables; write the typed dataset")
    validate_step.add_argument("raw")
    validate_step.add_argument("out")
    validate_step.add_argument("--report", help="write the Markdown report here")
    split = step.add_parser("split", help="hold out test interactions")
    split.add_argument("dataset")
    split.add_argument("out")
    split.add_argument("--protocol", default="time", choices=["time", "stratified"])
    split.add_argument("--test-days", type=int, default=3)
    split.add_argument("--start-date", default="", help="first day used (ISO date; default: all)")
    split.add_argument("--end-date", default="", help="last day used (ISO date; default: all)")
    for name, helptext in (("features", "compute the offline feature tables"), ("materialize", "feast apply + materialize")):
        sub = step.add_parser(name, help=helptext)
        sub.add_argument("dataset")
        if name == "features":
            sub.add_argument("split")
        sub.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    training_set = step.add_parser("training-set", help="labels joined point-in-time with the feature service")
    training_set.add_argument("dataset")
    training_set.add_argument("split")
    training_set.add_argument("out")
    training_set.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    training_set.add_argument("--config", help="TrainingSetConfig as JSON")
    ranking_set = step.add_parser("ranking-set", help="the ranker's rows, with the retrieval score")
    ranking_set.add_argument("dataset")
    ranking_set.add_argument("split")
    ranking_set.add_argument("model", help="the trained two-tower model directory")
    ranking_set.add_argument("out")
    ranking_set.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    ranking_set.add_argument("--config", help="TrainingSetConfig as JSON (default: feature service ranking_v1)")
    ranker = step.add_parser("train-ranker", help="train the DCN-v2 ranker on a ranking set")
    ranker.add_argument("ranking_set")
    ranker.add_argument("dataset")
    ranker.add_argument("out")
    ranker.add_argument("--config", help="RankerConfig as JSON")
    evaluate = step.add_parser("evaluate", help="score the stack, baseline, blessed stack, oracle; decide the blessing")
    evaluate.add_argument("model")
    evaluate.add_argument("ranker")
    evaluate.add_argument("dataset")
    evaluate.add_argument("split")
    evaluate.add_argument("out")
    evaluate.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    evaluate.add_argument("--k", type=int, default=10)
    evaluate.add_argument("--gate", help="GateConfig as JSON (default: the pipeline's)")
    evaluate.add_argument(
        "--candidate-depths",
        default=DEFAULTS.candidate_depths,
        help="candidates per user to score the stack with, comma-separated; it keeps the fewest within 1%% "
        "of the most's NDCG@k (default: the pipeline's, %(default)s)",
    )
    export = step.add_parser("export", help="write and register the bundle of a blessed model")
    export.add_argument("model")
    export.add_argument("ranker")
    export.add_argument("evaluation")
    export.add_argument("dataset")
    export.add_argument("out")
    export.add_argument("--workspace", default=DEFAULT_WORKSPACE)

    train = commands.add_parser("train", help="train the model with torchrun (the pipeline's train step)")
    train.add_argument("training_set", help="a training-set directory (recflow step training-set)")
    train.add_argument("out", help="model directory to write")
    train.add_argument("--config", help="TrainConfig JSON file (unknown keys are an error)")
    train.add_argument("--nproc-per-node", type=int, default=2)
    train.set_defaults(handler=cmd_train)

    serve = commands.add_parser(
        "serve", help="serve the recommender with KServe (V1 and V2 protocols, /metrics)",
        description="The KServe model server named 'recommender'; the container runs the same entrypoint.",
    )
    from serving.__main__ import add_arguments as add_serve_arguments
    from serving.affinity import cpu_list

    add_serve_arguments(serve)
    serve.set_defaults(handler=cmd_serve)

    bench = commands.add_parser("bench", help="benchmarks that print figures").add_subparsers(dest="bench_command", required=True)
    quality = bench.add_parser("quality", help="train the production configuration on a dataset and print top-k quality")
    quality.add_argument("--data", required=True, help="a MovieLens file/directory, a dataset directory or world:<scale>")
    quality.add_argument("--protocol", default="stratified", choices=["time", "stratified"])
    quality.add_argument("--workspace", help="keep the run here (default: a temporary directory)")
    quality.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                         help="override a pipeline parameter (repeatable); the protocol's settings apply otherwise")
    quality.add_argument("--json", action="store_true", help="print JSON instead of a table")
    quality.set_defaults(handler=cmd_bench_quality)
    train_bench = bench.add_parser("train", help="training samples/s for 1 and N processes, and time to the quality bar")
    train_bench.add_argument("--scale", default="demo")
    train_bench.add_argument("--nproc", default="1,2", help="process counts to compare (default: 1,2)")
    train_bench.add_argument("--max-epochs", type=int, default=3, help="longest run of the time-to-bar curve")
    train_bench.add_argument("--workspace", default=".recflow/bench-train", help="keeps the prepared training set")
    train_bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    train_bench.set_defaults(handler=cmd_bench_train)
    materialize = bench.add_parser("materialize", help="time materializing a world into the online store")
    materialize.add_argument("--scale", default="demo")
    materialize.add_argument("--workspace", default=".recflow/bench")
    materialize.set_defaults(handler=cmd_bench_materialize)
    serve_bench = bench.add_parser(
        "serve", help="recommender server latency and throughput against a no-op KServe model on the same settings"
    )
    serve_bench.add_argument("--workspace", default=DEFAULT_WORKSPACE,
                             help="its blessed model and feature store are served; trained at demo scale if absent")
    serve_bench.add_argument("--bundle", help="serve this bundle instead of the workspace's blessed model")
    serve_bench.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    serve_bench.add_argument("--seconds", type=float, default=20.0, help="measured seconds per server (default: 20)")
    serve_bench.add_argument("--users", type=int, default=2000, help="distinct known users the load cycles through")
    serve_bench.add_argument("--rounds", type=int, default=4,
                             help="turns the servers take, each measured seconds / rounds (default: 4)")
    serve_bench.add_argument("--freshness-trials", type=int, default=50, help="users whose pushed click is timed")
    placement = serve_bench.add_mutually_exclusive_group()
    placement.add_argument("--server-cpus", type=cpu_list,
                           help="CPUs every server runs on, the load generator on the others (default: the first)")
    placement.add_argument("--unpinned", action="store_true", help="leave the processes to the OS scheduler")
    serve_bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    serve_bench.set_defaults(handler=cmd_bench_serve)

    up = commands.add_parser("up", help="start the local platform: HAProxy, Prometheus, the stable model server",
                             description="Start the local platform on loopback, supervised; returns once it is healthy.")
    up.add_argument("--workspace", default=DEFAULT_WORKSPACE, help=f"default: {DEFAULT_WORKSPACE}")
    up.add_argument("--bundle", help="the stable model (default: the workspace's current blessed model)")
    up.add_argument("--config", help="platform settings (YAML, see recflow/platform/config.py)")
    up.set_defaults(handler=cmd_up)
    status = commands.add_parser("status", help="the local platform's processes (exit 1 if one is down)")
    status.add_argument("--workspace", default=DEFAULT_WORKSPACE, help=f"default: {DEFAULT_WORKSPACE}")
    status.set_defaults(handler=cmd_status)
    down = commands.add_parser("down", help="stop the local platform (nothing running is fine)")
    down.add_argument("--workspace", default=DEFAULT_WORKSPACE, help=f"default: {DEFAULT_WORKSPACE}")
    down.set_defaults(handler=cmd_down)
    rollout = commands.add_parser(
        "rollout", help="canary rollout of a bundle on the local platform or a cluster (exit 1 if rolled back)",
        description="Start the candidate as the canary, move traffic through the steps, analyse each interval "
                    "from Prometheus, then promote it or roll it back; writes a JSON decision log and an HTML report. "
                    "With --cluster, the canary is the InferenceService's (recflow/kubernetes/rollout.py).",
    )  # fmt: skip
    rollout.add_argument(
        "--candidate", required=True,
        help="the candidate model bundle directory; with --cluster, its storage URI (pvc://..., s3://...)",
    )
    rollout.add_argument(
        "--cluster", help="roll out on a cluster: ClusterRolloutConfig (YAML: prometheus_url, inference_service, "
                          "namespace, mode; see recflow/kubernetes/rollout.py)",
    )  # fmt: skip
    rollout.add_argument("--workspace", default=DEFAULT_WORKSPACE, help=f"default: {DEFAULT_WORKSPACE}")
    rollout.add_argument(
        "--workspace-volume", metavar="PATH",
        help="with --cluster, in a pod that mounts the workspace volume (pvc://recflow-workspace/...): its mount path. "
             "The score check then judges each model against its bundle's export-time scores there; without it, "
             "the canary's live scores are compared with the stable's",
    )  # fmt: skip
    rollout.add_argument("--steps", help="canary traffic percents, e.g. 5,25,50,100 (default: the config's)")
    rollout.add_argument("--interval", type=float, help="seconds at a step between analyses (default: the config's)")
    rollout.add_argument("--config", help="RolloutConfig (YAML, see recflow/rollout/controller.py)")
    rollout.add_argument("--report", help="HTML report path (default: <workspace>/platform/rollouts/<time>/)")
    rollout.add_argument(
        "--inject-fault", choices=["latency", "errors", "bad-model"],
        help="a drill: make the candidate slow, failing or a spoiled model, and watch it rolled back",
    )
    rollout.set_defaults(handler=cmd_rollout)
    retrain_parser = commands.add_parser(
        "retrain", help="fold the feedback into the stable model's data, retrain, and roll a blessed model out",
        description="Once (default), or with --watch whenever the drift monitor reports drift or the schedule is due: "
                    "the pipeline runs on the stable model's dataset plus the feedback logged since, and a model "
                    "the gate blesses goes to the rollout controller. With host and cluster in the config: on a "
                    "cluster (Kubeflow Pipelines, the InferenceService), as the chart's retraining pod runs it.",
    )  # fmt: skip
    retrain_parser.add_argument("--workspace", default=DEFAULT_WORKSPACE, help=f"default: {DEFAULT_WORKSPACE}")
    retrain_parser.add_argument("--watch", action="store_true", help="keep watching the trigger until Ctrl-C")
    retrain_parser.add_argument("--config", help="RetrainConfig (YAML, see recflow/pipeline/retrain.py)")
    retrain_parser.set_defaults(handler=cmd_retrain)
    demo = commands.add_parser(
        "demo", help="the closed loop end to end: train, serve, drift, retrain, canary, a faulty candidate; a report",
        description="Trains on the demo world unless the workspace has a blessed model, starts the local platform, "
                    "plays the world's users, drifts their tastes until the monitor notices, retrains and rolls the "
                    "new model out, then rolls a faulty candidate back; prints a summary and the report's path.",
    )  # fmt: skip
    demo.add_argument("--workspace", default=DEFAULT_WORKSPACE, help=f"default: {DEFAULT_WORKSPACE}")
    demo.add_argument("--config", help="DemoConfig (YAML, see recflow/platform/demo.py)")
    demo.set_defaults(handler=cmd_demo)
    simulate = commands.add_parser(
        "simulate", help="the world's users against the local platform: requests, clicks, feedback (exit 1 on failures)"
    )
    simulate.add_argument("--rps", type=float, required=True, help="requests per second")
    simulate.add_argument("--duration", type=float, required=True, help="seconds")
    simulate.add_argument("--workspace", default=DEFAULT_WORKSPACE, help=f"default: {DEFAULT_WORKSPACE}")
    simulate.add_argument("--k", type=int, default=10, help="items per request")
    simulate.add_argument("--day", type=int, help="world day whose tastes apply (default: the day after the log)")
    simulate.add_argument("--drift-strength", type=float, help="tastes moved this far (0..1) to the trending mix")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--ground-truth", help="a saved world oracle (default: drawn from the model card's world)")
    simulate.add_argument("--json", action="store_true", help="print the report as JSON")
    simulate.set_defaults(handler=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from recflow.data.validation import DataValidationError

    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.handler(args)
    except DataValidationError as error:
        print(f"recflow: data validation failed:\n{error}", file=sys.stderr)
        return 1
    except (ValidationError, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"recflow: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
