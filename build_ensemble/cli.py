"""``build-ensemble``: build, evaluate, serve, query and stop the retrieval service."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from build_ensemble import constants as C
from build_ensemble.config import EXPORT_OPTIONS, BuildConfig
from build_ensemble.errors import RecsysError
from build_ensemble.progress import Reporter

logger = logging.getLogger("build_ensemble")


@contextlib.contextmanager
def _quiet_libraries():
    """Keep TensorFlow, Merlin and Feast from flooding the terminal while a command runs
    (set before they are imported; warnings are restored when the block ends)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("FEAST_USAGE", "False")
    for name in ("tensorflow", "merlin", "feast", "numba", "distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    with warnings.catch_warnings():
        # Feast re-installs warning filters on import, so silence the display itself.
        warnings.showwarning = lambda *args, **kwargs: None
        yield


class ConsoleReporter(Reporter):
    """Stage banners with durations, per-epoch lines, and progress bars when stderr is a terminal
    (a log file gets the lines without the bars' carriage returns)."""

    def __init__(self):
        self.terminal = sys.stderr.isatty()

    def stage(self, name: str) -> None:
        print(f"==> {name}", file=sys.stderr, flush=True)

    def stage_done(self, name: str, seconds: float) -> None:
        print(f"    {name} done in {seconds:.1f} s", file=sys.stderr, flush=True)

    def epoch(self, record: dict) -> None:
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("valid_"))
        print(f"    epoch {record['epoch']:>3}  loss {record['loss']:.4f}  {metrics}  ({record['seconds']:.1f} s)",
              file=sys.stderr, flush=True)

    def iterate(self, items, desc: str, total: int | None = None):
        if not self.terminal:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=f"    {desc}", total=total, file=sys.stderr)

    def batches(self, total: int):
        if not self.terminal:
            return None
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="    training", unit="batch", leave=False, file=sys.stderr)

        def tick(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        return tick


# ---------------------------------------------------------------- options from the dataclasses that own them


def _default(owner, name: str):
    """The default of a dataclass field or of a function's parameter, so the CLI never restates it."""
    if dataclasses.is_dataclass(owner):
        f = next(f for f in dataclasses.fields(owner) if f.name == name)
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return inspect.signature(owner).parameters[name].default


def _add_config_options(parser: argparse.ArgumentParser, names: tuple | None = None, default_text: dict | None = None) -> None:
    """Flags for ``BuildConfig``'s fields (all, or ``names``); their values default to None
    (unset), and the help shows the field's default or ``default_text[name]``."""
    if names is None:
        parser.add_argument("--config", help="YAML file of option: value (flags override it)")
    for f in dataclasses.fields(BuildConfig):
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        shown = (default_text or {}).get(f.name, _default(BuildConfig, f.name))
        helptext = f"{f.metadata.get('help', '')} (default: {shown})"
        kwargs = {"dest": f.name, "default": None, "help": helptext}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        kind = str(f.type).split(" | ")[0]  # annotations are strings: "int | None", "list", ...
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif kind == "list":
            parser.add_argument(flag, nargs="+", type=int, metavar="N", **kwargs)
        elif kind in ("int", "float"):
            parser.add_argument(flag, type=int if kind == "int" else float, **kwargs)
        else:
            parser.add_argument(flag, **kwargs)


def _dataset_defaults() -> str:
    """The help's list of the defaults each data set, split and model sets over the fields' own."""
    from build_ensemble.config import DATASET_DEFAULTS, MODEL_DEFAULTS, SPLIT_DEFAULTS

    def options(values: dict) -> str:
        return ", ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                         for k, v in values.items())

    lines = ["data set defaults (over the defaults above; a flag or the YAML file still wins):"]
    lines += [f"  {name}: {options(values)}" for name, values in DATASET_DEFAULTS.items() if values]
    lines += [f"  {name}, --split {split}: {options(values)}" for (name, split), values in SPLIT_DEFAULTS.items()]
    lines += [f"  {name}, --model {model}: {options(values)}" for (name, model), values in MODEL_DEFAULTS.items()]
    return "\n".join(lines)


def _config_from_args(args: argparse.Namespace) -> BuildConfig:
    from build_ensemble.config import make_config

    names = {f.name for f in dataclasses.fields(BuildConfig)}
    return make_config(args.config, {k: v for k, v in vars(args).items() if k in names})


# ---------------------------------------------------------------- subcommands


def cmd_build(args: argparse.Namespace) -> int:
    from build_ensemble.pipeline import build

    config = _config_from_args(args)
    result = build(config, ConsoleReporter())
    _print_build(result)
    return 0


def _print_build(result) -> None:
    metrics = result.metrics
    k = metrics["ks"][0]
    print(f"\nbuild folder:      {result.out.resolve()}")
    print(f"feature repo:      {result.feature_repo.resolve()}")
    print(f"model repository:  {result.repository.resolve()}")
    print(_index_line(result.manifest["index"]))
    print(f"\ntest metrics ({metrics['users']} users, seen items {'masked' if metrics['exclude_seen'] else 'kept'}):")
    print(f"  {'model':<14}{'recall@' + str(k):>12}{'ndcg@' + str(k):>12}")
    for name in ("two_tower", "most_popular", "random"):
        print(f"  {name:<14}{metrics[name][f'recall@{k}']:>12.4f}{metrics[name][f'ndcg@{k}']:>12.4f}")
    version = result.manifest["model_version"]
    print(f"\nnext: build-ensemble serve --background --repository {result.repository}   (version {version}), "
          f"then build-ensemble recommend --user-id ID")


def cmd_export(args: argparse.Namespace) -> int:
    from build_ensemble.pipeline import export_build

    overrides = {name: getattr(args, name) for name in EXPORT_OPTIONS}
    info = export_build(args.out, args.repository, args.feature_repo, overrides, ConsoleReporter())
    print(f"model repository:  {Path(args.repository).resolve()}  (version {info['model_version']})")
    print(f"models:            {', '.join(info['models'])}")
    print(_index_line(info["index"]))
    return 0


def _index_line(index: dict) -> str:
    return f"index:             {index['kind']} {index['params']} recall@{index['k']} vs exact {index['recall_at_k']:.4f}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from build_ensemble.pipeline import evaluate_build

    metrics = evaluate_build(args.out, args.ks, args.exclude_seen)
    print(json.dumps(metrics, indent=2))
    return 0


def _server_spec(args: argparse.Namespace):
    from build_ensemble.server.launch import ServerSpec

    names = {f.name for f in dataclasses.fields(ServerSpec)}
    return ServerSpec(**{k: v for k, v in vars(args).items() if k in names})


def cmd_serve(args: argparse.Namespace) -> int:
    from build_ensemble.server.launch import check_repository
    from build_ensemble.server.state import STATE_FILE, write_state
    from build_ensemble.server.supervise import SupervisedServer

    if args.print_command:
        from build_ensemble.server.launch import shell_script

        print(shell_script(_server_spec(args)), end="")
        return 0
    if args.background:
        return _serve_in_background(args)
    spec = _server_spec(args)
    server = SupervisedServer(spec)
    server.check()
    print(f"starting tritonserver (log: {spec.log_path}) ...", file=sys.stderr, flush=True)
    server.start(timeout=args.timeout, checked=True)
    write_state(server)
    print(f"ready: HTTP {spec.http_url}  gRPC {spec.grpc_url}  metrics {spec.host}:{spec.metrics_port}/metrics")
    print(f"models: {', '.join(check_repository(Path(spec.repository)))}  (log: {spec.log_path})", flush=True)
    try:
        server.supervise(on_start=write_state)
    except KeyboardInterrupt:
        print("stopping ...", file=sys.stderr)
    finally:
        server.stop()
        (Path(spec.state_dir) / STATE_FILE).unlink(missing_ok=True)
    return 0


def _serve_in_background(args: argparse.Namespace) -> int:
    """Run ``serve`` (same options, in the foreground) as a detached process, and return
    once its server is ready. That process supervises the server (watchdog) until `stop`."""
    import subprocess

    from build_ensemble.server.state import STATE_FILE, read_state

    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    output = state_dir / "serve.out"
    argv = [a for a in args.argv if a != "--background"]
    with output.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", "build_ensemble.cli", *argv], stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + args.timeout + 30
    while read_state(state_dir) is None:
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            errors = [line for line in output.read_text().splitlines() if line.startswith("error")]
            raise RecsysError(errors[-1].removeprefix("error: ") if errors else f"serve did not start; see {output}")
        time.sleep(0.2)
    print(output.read_text().strip())
    print(f"running in the background, supervised by pid {child.pid} ({state_dir / STATE_FILE}); "
          f"stop it with `build-ensemble stop{_state_flag(args)}`")
    return 0


def _state_flag(args: argparse.Namespace) -> str:
    """`` --state-dir DIR`` for a hint when DIR is not the default, else nothing."""
    from build_ensemble.server.launch import ServerSpec

    return "" if args.state_dir == _default(ServerSpec, "state_dir") else f" --state-dir {args.state_dir}"


def cmd_reload(args: argparse.Namespace) -> int:
    from build_ensemble.server.state import read_state, spec_from_state
    from build_ensemble.server.supervise import reload_models

    state = read_state(args.state_dir)
    if state is None:
        raise RecsysError(f"no running server recorded in {args.state_dir}: start one with "
                          f"`build-ensemble serve --background{_state_flag(args)}`")
    spec = spec_from_state(state)
    spec.verify = args.verify
    print(f"loading the newest versions of {spec.repository} into {spec.http_url} ...", file=sys.stderr, flush=True)
    for model, versions in reload_models(spec, args.timeout).items():
        print(f"{model}: serving version {', '.join(map(str, versions))}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from build_ensemble.integrity import verify_repository
    from build_ensemble.server.launch import check_repository

    check_repository(Path(args.repository))
    folders = verify_repository(args.repository)
    print(f"{len(folders)} model version(s) of {args.repository} match their build's checksums")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from build_ensemble.server.state import stop_background

    state = stop_background(args.state_dir)
    if state is None:
        print(f"no background server recorded in {args.state_dir} (started with another --state-dir?)")
        return 1
    print(f"stopped tritonserver pid {state['pid']}")
    return 0


def _url(args: argparse.Namespace, protocol: str, given: str | None) -> str:
    """``given``, else the address of the server recorded in ``--state-dir``, else the default."""
    from build_ensemble.client import DEFAULT_URLS
    from build_ensemble.server.state import read_state, spec_from_state

    if given:
        return given
    state = read_state(args.state_dir)
    if state is None:
        return DEFAULT_URLS[protocol]
    spec = spec_from_state(state)
    return spec.grpc_url if protocol == "grpc" else spec.http_url


def cmd_recommend(args: argparse.Namespace) -> int:
    from build_ensemble.client import RetrievalClient

    with RetrievalClient(_url(args, args.protocol, args.url), args.protocol, timeout=args.timeout) as client:
        answers = client.recommend(args.user_id, args.k)
    out = [
        {"user_id": a.user_id, "items": a.item_ids, "scores": [round(s, 6) for s in a.scores],
         "fallback": a.fallback, "partial_features": a.partial_features,
         **({"item_features": a.item_features} if a.item_features else {})}
        for a in answers
    ]
    print("[\n" + ",\n".join("  " + json.dumps(o) for o in out) + "\n]")
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    from build_ensemble.loadtest import harness as loadtest
    from build_ensemble.server.state import read_state

    ids = loadtest.UserIds(args.out, args.unknown_share, args.seed)
    state = read_state(args.state_dir)
    pid = state["pid"] if state else None
    urls = {protocol: _url(args, protocol, getattr(args, f"{protocol}_url")) for protocol in ("grpc", "http")}
    levels = loadtest.levels(args.concurrency, args.rate)
    results = []
    for protocol in args.protocol:
        for kind, value in levels:
            print(f"==> {protocol} {kind} {value} for {args.requests or args.duration} "
                  f"{'requests' if args.requests else 's'}", file=sys.stderr, flush=True)
            results.append(loadtest.run_level(
                urls[protocol], protocol, ids, duration=args.duration, requests=args.requests,
                users_per_request=args.users_per_request, server_pid=pid, model=args.model, **{kind: value},
            ))
    print(loadtest.format_table(results))
    paths = loadtest.write_results(results, args.results)
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    if args.perf_analyzer:
        from build_ensemble.loadtest import perf_analyzer

        folder = Path(args.results)
        data = perf_analyzer.write_input_data(folder / "perf_analyzer_input.json", ids.sample(1000))
        rows = []
        for protocol in args.protocol:
            for concurrency in [value for kind, value in levels if kind == "concurrency"] or [1]:
                report = folder / f"perf_analyzer_{protocol}_c{concurrency}.csv"
                rows.append({"protocol": protocol, **perf_analyzer.run(
                    urls[protocol], protocol, data, concurrency, report, args.perf_measurement_ms,
                    args.perf_stability, args.model,
                )})
                print(f"perf_analyzer {protocol} c={concurrency}: {rows[-1]['rps']:.1f} infer/s, "
                      f"p50 {rows[-1]['p50_ms']:.2f} ms, p99 {rows[-1]['p99_ms']:.2f} ms")
        (folder / "perf_analyzer.json").write_text(json.dumps({"levels": rows}, indent=2) + "\n")
    return 0


DEMO_DATASET = "movielens-100k"  # real data: the Two-Tower beats most-popular there


def cmd_demo(args: argparse.Namespace) -> int:
    """Build on MovieLens-100K (or ``--dataset``), serve, ask a few users over both protocols, stop."""
    import pandas as pd

    from build_ensemble.client import RetrievalClient
    from build_ensemble.pipeline import build
    from build_ensemble.server.launch import TritonServer

    if args.dataset is None and args.dataset_spec is None:
        args.dataset = DEMO_DATASET
    config = _config_from_args(args)
    result = build(config, ConsoleReporter())
    _print_build(result)
    args.repository, args.feature_repo = config.repository, config.feature_repo
    spec = _server_spec(args)
    print(f"\n==> serve (log: {spec.log_path})", file=sys.stderr, flush=True)
    users = pd.read_parquet(result.out / C.TEST_FILE, columns=[C.USER_ID])[C.USER_ID].unique()[:3].tolist()
    known = pd.read_parquet(result.out / C.USER_FEATURES_FILE)[C.USER_ID]
    unknown = int(known.max()) + 1 if pd.api.types.is_integer_dtype(known.dtype) else "unknown-user"
    server = TritonServer(spec).start(timeout=args.timeout)
    try:
        for protocol, url in (("grpc", spec.grpc_url), ("http", spec.http_url)):
            with RetrievalClient(url, protocol) as client:
                answers = client.recommend(users + [unknown])
            print(f"\n{protocol.upper()} {url}  users {users} and unknown user {unknown}:")
            for a in answers:
                tag = "  (fallback: popular items)" if a.fallback else ""
                print(f"  user {a.user_id:>8}: items {a.item_ids}{tag}")
    finally:
        server.stop()
    print("\nserver stopped. Serve it yourself with `build-ensemble serve`.")
    return 0


def _add_server_options(parser: argparse.ArgumentParser, with_repos: bool = True) -> None:
    from build_ensemble.server.launch import READY_TIMEOUT, ServerSpec

    spec = {name: _default(ServerSpec, name) for name in ("host", "http_port", "grpc_port", "metrics_port", "state_dir")}
    if with_repos:
        repository = _default(BuildConfig, "repository")
        parser.add_argument("--repository", default=repository, help=f"Triton model repository (default: {repository})")
        parser.add_argument("--feature-repo", default=None,
                            help="Feast repository the models read (default: the one recorded at build, beside the model repository)")
    parser.add_argument("--host", default=spec["host"], help=f"address to bind (default: {spec['host']}, loopback only)")
    for name in ("http", "grpc", "metrics"):
        port = spec[f"{name}_port"]
        parser.add_argument(f"--{name}-port", type=int, default=port, help=f"{name if name != 'http' else 'HTTP'} port (default: {port})")
    _add_state_dir(parser, "server log, pid file and backend links")
    parser.add_argument("--timeout", type=float, default=READY_TIMEOUT,
                        help=f"seconds to wait for the server to be ready (default: {READY_TIMEOUT:g})")


def _add_state_dir(parser: argparse.ArgumentParser, what: str) -> None:
    from build_ensemble.server.launch import ServerSpec

    default = _default(ServerSpec, "state_dir")
    parser.add_argument("--state-dir", default=default, help=f"{what} (default: {default})")


def _add_verify_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="check each model version against the checksums its build recorded (default: on)")


def make_parser() -> argparse.ArgumentParser:
    from build_ensemble import client
    from build_ensemble.loadtest import harness, perf_analyzer
    from build_ensemble.server.launch import ServerSpec
    from build_ensemble.server.supervise import RELOAD_TIMEOUT

    parser = argparse.ArgumentParser(prog="build-ensemble", description=__doc__)
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging and tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    out = _default(BuildConfig, "out")

    p = sub.add_parser("build", help="run the whole pipeline: data, workflow, model, evaluation, index, feature store, export",
                       epilog=_dataset_defaults(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_options(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("export", help="write (or add a version to) a model repository from an existing build, without retraining")
    p.add_argument("--out", default=out, help=f"build folder (default: {out})")
    p.add_argument("--repository", default=_default(BuildConfig, "repository"),
                   help=f"model repository to write (default: {_default(BuildConfig, 'repository')})")
    p.add_argument("--feature-repo", default=None, help="where the models find the Feast repository (default: the build's)")
    _add_config_options(p, EXPORT_OPTIONS, default_text={
        **{name: "the build's" for name in EXPORT_OPTIONS}, "model_version": "0: one above the repository's highest"})
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="test metrics of an existing build, from its exported embeddings")
    p.add_argument("--out", default=out, help=f"build folder (default: {out})")
    p.add_argument("--ks", nargs="+", type=int, default=None, help="cut-offs (default: the build's)")
    p.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=None,
                   help="mask training and validation items (default: the build's setting)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="start tritonserver on the model repository and wait until ready")
    _add_server_options(p)
    p.add_argument("--model-control", choices=("explicit", "poll", "none"), default=_default(ServerSpec, "model_control"),
                   help="Triton's model control: explicit (all models loaded at start, new versions by "
                        "`build-ensemble reload`), poll (Triton loads new versions by itself, unverified), none")
    _add_verify_option(p)
    p.add_argument("--watchdog", action=argparse.BooleanOptionalAction, default=_default(ServerSpec, "watchdog"),
                   help="reload the model if its Python-backend process dies (default: on; needs explicit model control)")
    p.add_argument("--restricted", action=argparse.BooleanOptionalAction, default=_default(ServerSpec, "restricted"),
                   help="Triton's model-repository, shared-memory, logging and trace APIs need the header "
                        "triton-control-key with the key in <state-dir>/control.key (default: on)")
    p.add_argument("--background", action="store_true", help="return once ready; stop with `build-ensemble stop`")
    p.add_argument("--print-command", action="store_true",
                   help="print the exact tritonserver command line and environment serve uses, as a shell script "
                        "(for systemd, a container or Kubernetes), and exit")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("reload", help="load the newest model versions into the running server, without downtime")
    _add_state_dir(p, "state folder given to serve")
    p.add_argument("--timeout", type=float, default=RELOAD_TIMEOUT, help=f"seconds to wait for the load (default: {RELOAD_TIMEOUT:g})")
    _add_verify_option(p)
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("verify", help="check every model version of a repository against its build's checksums")
    p.add_argument("--repository", default=_default(BuildConfig, "repository"),
                   help=f"model repository (default: {_default(BuildConfig, 'repository')})")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("stop", help="stop a server started with `serve --background`")
    _add_state_dir(p, "state folder given to serve")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("recommend", help="ask the served model for the top-k items of users; prints JSON")
    p.add_argument("--user-id", action="append", required=True,
                   help="raw user id (repeat for several); an integer, or a string for a model of string ids")
    p.add_argument("--k", type=int, default=None, help="items per user (default: the build's --top-k; at most the catalog size and 1000)")
    p.add_argument("--protocol", choices=client.PROTOCOLS, default=client.PROTOCOLS[0], help=f"protocol (default: {client.PROTOCOLS[0]})")
    p.add_argument("--url", default=None, help=f"host:port (default: the server recorded in --state-dir, else "
                                               f"{client.DEFAULT_URLS['grpc']} for gRPC, {client.DEFAULT_URLS['http']} for HTTP)")
    _add_state_dir(p, "state folder of `serve --background`, whose ports are used")
    p.add_argument("--timeout", type=float, default=client.DEFAULT_TIMEOUT, help=f"seconds per request (default: {client.DEFAULT_TIMEOUT:g})")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("loadtest", help="drive the served model with real user ids; report throughput and latency")
    run_level = lambda name: _default(harness.run_level, name)  # noqa: E731
    p.add_argument("--out", default=out, help=f"build folder whose users are sent (default: {out})")
    p.add_argument("--protocol", nargs="+", choices=client.PROTOCOLS, default=["grpc"], help="protocols (default: grpc)")
    for protocol in client.PROTOCOLS:
        url = client.DEFAULT_URLS[protocol]
        p.add_argument(f"--{protocol}-url", default=None,
                       help=f"{protocol} host:port, loopback only (default: the server recorded in --state-dir, else {url})")
    p.add_argument("--model", default=run_level("model"), help=f"Triton model to call (default: {run_level('model')})")
    p.add_argument("--concurrency", nargs="+", type=int,
                   help=f"closed-loop levels: concurrent requests (default: {' '.join(map(str, harness.DEFAULT_CONCURRENCY))})")
    p.add_argument("--rate", nargs="+", type=float, help="open-loop levels: requests per second")
    p.add_argument("--duration", type=float, default=run_level("duration"), help=f"seconds per level (default: {run_level('duration'):g})")
    p.add_argument("--requests", type=int, default=None, help="requests per level instead of a duration")
    p.add_argument("--users-per-request", type=int, default=run_level("users_per_request"),
                   help=f"user ids per request (default: {run_level('users_per_request')})")
    p.add_argument("--unknown-share", type=float, default=_default(harness.UserIds, "unknown_share"),
                   help="share of unknown user ids (default: 0)")
    p.add_argument("--seed", type=int, default=_default(harness.UserIds, "seed"), help="seed of the user-id draw (default: 0)")
    p.add_argument("--results", default="benchmarks/loadtest", help="folder for CSV, JSON and PNG (default: benchmarks/loadtest)")
    _add_state_dir(p, "state folder of `serve --background` (for the server's RSS)")
    p.add_argument("--perf-analyzer", action="store_true", help="also run NVIDIA perf_analyzer on the same user ids")
    measurement, stability = (_default(perf_analyzer.run, n) for n in ("measurement_ms", "stability"))
    p.add_argument("--perf-measurement-ms", type=int, default=measurement, help=f"perf_analyzer window (default: {measurement})")
    p.add_argument("--perf-stability", type=int, default=stability, help=f"perf_analyzer stability percentage (default: {stability})")
    p.set_defaults(func=cmd_loadtest)

    p = sub.add_parser("demo", help=f"build ({DEMO_DATASET} unless --dataset), serve, query a few users over gRPC "
                                    f"and HTTP, stop")
    _add_config_options(p)
    _add_server_options(p, with_repos=False)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list | None = None) -> int:
    args = make_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        with contextlib.nullcontext() if args.verbose else _quiet_libraries():
            return args.func(args)
    except RecsysError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001  one line unless --verbose
        if args.verbose:
            raise
        if type(exc).__name__ == "InferenceServerException":  # tritonclient's: the server's own message
            print(f"error: the server answered: {exc.message()}", file=sys.stderr)
            return 2
        print(f"error: {type(exc).__name__}: {exc} (run with --verbose for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
