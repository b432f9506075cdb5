"""``sweep`` command line: each subcommand parses, calls one library function, prints, returns a code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sweep.errors import SweepError, disk_full, no_space
from sweep.formats import FORMATS
from trainers.base import UserError

TRIALS_ERRORED, USER_ERROR, INTERRUPTED = 1, 2, 130


def _validate(args: argparse.Namespace) -> int:
    from sweep.spec import load_spec

    spec = load_spec(args.spec, args.set)
    print(
        f"{args.spec}: ok — {spec.trainer} sweep '{spec.name}', {len(spec.search)} searched parameters "
        f"({', '.join(spec.search)}), {spec.budget.trials} trials, {spec.sampler.name} + {spec.scheduler.name}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from sweep.cluster import stop_ray
    from sweep.export import load_table, locate_uri, render, summary
    from sweep.interrupts import handled
    from sweep.journal import PENDING
    from sweep.runner import run_sweep
    from sweep.spec import load_spec

    spec = load_spec(args.spec, spec_overrides(args))
    results = Path(args.results)
    try:
        with handled():
            outcome = run_sweep(spec, results=results, resume=args.resume, address=args.address)
    except Exception as e:  # before any trial: nothing started, the same command works once there is space
        if not disk_full(e):
            raise
        raise SweepError(f"{no_space(results / spec.name)}: {last_line_of(e)}; free some, then run it again") from None
    finally:
        stop_ray()
    if outcome.fault:
        print(
            f"error: {outcome.fault.reason}: the sweep stopped, its state kept; {outcome.fault.fix}, continue with: "
            f"sweep run {args.spec} --resume",
            file=sys.stderr,
        )
        return TRIALS_ERRORED
    if (results / spec.name / PENDING).exists():
        print(f"sweep {spec.name}: its tracking records wait for `sweep sync {spec.name}`")
    else:
        table = load_table(spec.name, locate_uri(spec.name, results, None), spec.tracking.experiment)
        print(summary(table))
        print(render(table, "md", top=10))
    if outcome.interrupted:
        print(f"interrupted; continue with: sweep run {args.spec} --resume", file=sys.stderr)
        return INTERRUPTED
    if outcome.errors:
        trial, reason = outcome.errors[0]
        print(
            f"{len(outcome.errors)} of {len(outcome.grid)} trials errored; first, {trial}: {reason} "
            f"(full tracebacks in {outcome.log})",
            file=sys.stderr,
        )
        return TRIALS_ERRORED
    return 0


def last_line_of(error: BaseException) -> str:
    """The first line of ``error``'s message (SQLAlchemy's run to several)."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def spec_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides, and ``--storage`` as the one it stands for."""
    return [*args.set, *([f"storage.uri={args.storage}"] if getattr(args, "storage", None) else [])]


def _submit(args: argparse.Namespace) -> int:
    from sweep.jobs import address_of, submit
    from sweep.spec import load_spec

    overrides = spec_overrides(args)
    spec = load_spec(args.spec, overrides)
    job = submit(spec, Path(args.spec), overrides, args.address, args.resume, args.cluster_results)
    where = f" --address {args.address}" if args.address else ""
    print(
        f"submitted {job} to {address_of(args.address)}: sweep '{spec.name}' runs on the cluster\n"
        f"follow it with `sweep logs {job}{where} --follow`; stop it with `sweep stop {job}{where}`"
    )
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from sweep.jobs import address_of, jobs

    found = jobs(args.address)
    if not found:
        print(f"no sweep jobs on {address_of(args.address)}")
        return 0
    rows = [(j.name, j.sweep, j.status, j.started, j.ended, j.message) for j in found]
    print(tabulate(rows, headers=["job", "sweep", "status", "started", "ended", "message"], tablefmt="github"))
    return 0


def _logs(args: argparse.Namespace) -> int:
    from sweep.jobs import logs

    status = logs(args.address, args.name, args.follow)
    if args.follow:
        print(f"job ended: {status}", file=sys.stderr)
        return 0 if status == "SUCCEEDED" else TRIALS_ERRORED
    return 0


def _stop(args: argparse.Namespace) -> int:
    from sweep.jobs import stop

    job, status = stop(args.address, args.name)
    print(f"{job}: {status}; continue it with `sweep submit SPEC --resume`")
    return 0 if status == "STOPPED" else TRIALS_ERRORED


def _status(args: argparse.Namespace) -> int:
    from sweep.export import load_table, locate_uri, render, summary

    table = load_table(args.name, locate_uri(args.name, Path(args.results), args.tracking_uri), args.experiment)
    print(summary(table))
    print(render(table, "md"))
    return 0


def _export(args: argparse.Namespace) -> int:
    from sweep.export import compare, load_table, locate_uri, render

    results = Path(args.results)
    keys = [args.group_by] if args.group_by else []
    tables = [load_table(n, locate_uri(n, results, args.tracking_uri), args.experiment, keys) for n in args.names]
    if len(tables) == 1 and not args.group_by:
        text = render(tables[0], args.format, args.top)
        default = results / args.names[0] / f"best_params.{FORMATS[args.format]}"
    else:
        by = f" per {args.group_by}" if args.group_by else ""
        metrics = ", ".join(sorted({f"{t.metric} {t.mode}" for t in tables}))
        caption = f"Best trials{by} of {', '.join(args.names)} ({metrics})"
        text = render(compare(tables, args.group_by, args.top), args.format, caption=caption)
        stem = "_".join(args.names) + (f"_by_{args.group_by}" if args.group_by else "")
        default = results / f"best_params_{stem}.{FORMATS[args.format]}"
    out = Path(args.output) if args.output else default
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out)
    except OSError as e:
        raise SweepError(f"-o: cannot write {out}: {e.strerror}") from None
    print(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from sweep.evaluate import evaluate_best
    from sweep.export import locate_uri

    results = Path(args.results)
    scores = evaluate_best(args.name, results, locate_uri(args.name, results, args.tracking_uri), args.experiment)
    for key, value in scores.items():
        print(f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}")
    print(
        f"per-class tables (and the confusion matrix of a classifier) in {results / args.name / 'test'}",
        file=sys.stderr,
    )
    return 0


def _rerun(args: argparse.Namespace) -> int:
    from sweep.cluster import stop_ray
    from sweep.export import render
    from sweep.rerun import rerun

    try:
        table = rerun(args.name, Path(args.results), args.top, args.seeds, args.address)
    finally:
        stop_ray()
    print(render(table, "md"))
    metric = [c for c in table.columns if c.endswith("_mean")][0].removesuffix("_mean")
    for _, row in table.iterrows():
        print(
            f"{row['run']}: {metric} {row[f'{metric}_mean']:.4f} ± {row[f'{metric}_ci95']:.4f} "
            f"(95% CI, {int(row['seeds'])} seeds; the search's single run: {row[metric]:.4f})"
        )
    return 0


def _report(args: argparse.Namespace) -> int:
    from sweep.report import build

    results = Path(args.results)
    out = Path(args.output) if args.output else results / "report" / "_".join(args.names)
    page = build(args.names, results, out, args.tracking_uri)
    print(f"report in {out}: {page.name} (self-contained) and report.md with its figures")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from sweep.export import locate_uri
    from sweep.promote import promote

    results = Path(args.results)
    uri = locate_uri(args.name, results, args.tracking_uri)
    done = promote(args.name, results, uri, args.registered_name, args.alias, args.experiment)
    print(
        f"{done.name} version {done.version} (@{done.alias}): the best trial {done.trial}, {done.model_uri}\n"
        f"load it with:\n  {done.snippet}"
    )
    return 0


def _detect(args: argparse.Namespace) -> int:
    from sweep.evaluate import detect_best
    from sweep.export import locate_uri

    results = Path(args.results)
    uri = locate_uri(args.name, results, args.tracking_uri)
    out = Path(args.output)
    written = detect_best(
        args.name, results, uri, Path(args.images), out, args.proposals, args.score, args.top_k, args.experiment
    )
    print(f"{len(written)} pictures in {out} (also in the best trial's MLflow run, under detect/)")
    return 0


def _sync(args: argparse.Namespace) -> int:
    from sweep import store
    from sweep.journal import sync

    delivered = sync(args.name, Path(args.results), args.tracking_uri)
    if delivered is None:
        print(f"sweep {args.name}: nothing to sync")
    else:
        count, uri = delivered
        print(f"sweep {args.name}: {count} kept records delivered to {store.redact(uri)}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from sweep import store
    from sweep.export import locate_uri
    from sweep.serve import serve, tool

    uri = locate_uri(args.name or "", Path(args.results), args.tracking_uri)
    exp_id, metric, mode = store.sweep_view(uri, args.name, args.experiment) if args.name else (None, None, "max")
    if uri.startswith(("http://", "https://")):  # a tracking server has its UI already
        _server_answers(uri)
        print(f"MLflow UI of the tracking server: {store.runs_link(uri, exp_id, metric, mode)}")
        return 0
    url = _free_url(args.host, args.port)
    cmd = [tool("mlflow"), "server", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    cmd += ["--workers", "1"]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # GenAI job runners: not needed to read sweeps
    return serve(cmd, f"{url}/health", store.runs_link(url, exp_id, metric, mode), "MLflow UI", env)


def _server_answers(uri: str) -> None:
    """A tracking server's UI link is printed only when the server answers."""
    import urllib.error
    import urllib.request

    from sweep import store

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
            pass
    except urllib.error.HTTPError:
        pass  # it answered (a protected route)
    except OSError as e:
        raise SweepError(f"tracking.uri: cannot reach {store.redact(uri)}: {getattr(e, 'reason', e)}") from None


def _dashboard(args: argparse.Namespace) -> int:
    from sweep.serve import serve, tool
    from sweep.study import study_link, study_storage

    storage = study_storage(args.name, Path(args.results))
    url = _free_url(args.host, args.port)
    cmd = [tool("optuna-dashboard"), storage, "--host", args.host, "--port", str(args.port)]
    return serve(cmd, f"{url}/api/studies", study_link(url, storage, args.name), "optuna-dashboard")


def _tensorboard(args: argparse.Namespace) -> int:
    from sweep.serve import serve, tool
    from sweep.storage import tensorboard_logdir

    logdir = tensorboard_logdir(args.name, Path(args.results))
    url = _free_url(args.host, args.port)
    cmd = [tool("tensorboard"), "--logdir", str(logdir), "--host", args.host, "--port", str(args.port)]
    return serve(cmd, f"{url}/data/environment", url, "TensorBoard")


def _free_url(host: str, port: int) -> str:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: a closing port is free
        try:
            s.bind((host, port))
        except OSError as e:
            import errno

            if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
                raise SweepError(f"--host {host}: not an address of this machine ({e.strerror})") from None
            raise SweepError(f"--port: {host}:{port} is in use ({e.strerror}); choose another with --port") from None
    return f"http://{host}:{port}"


def _at_least_one(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text}")
    return int(text)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sweep")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep", description="Hyperparameter sweeps for transfer learning in vision.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def spec_cmd(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("spec", help="the sweep's YAML spec")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override a spec key (value parsed as YAML); repeatable",
        )
        return p

    def name_cmd(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("name", help="the sweep's name (the spec's name:)")
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's, or ./mlruns.db)")
        p.add_argument("--experiment", help="MLflow experiment (default: the sweep's name)")
        return p

    spec_cmd("validate", "check a spec and report every problem").set_defaults(func=_validate)
    run = spec_cmd("run", "run a sweep on Ray Tune")
    run.add_argument("--resume", action="store_true", help="continue an interrupted sweep; nothing is redone")
    run.add_argument("--address", help="join an existing Ray cluster: auto, or the head's HOST:PORT")
    run.add_argument("--storage", metavar="URI", help="Ray Tune state, checkpoints and cache: a shared path or s3://…")
    run.set_defaults(func=_run)
    submit = spec_cmd("submit", "run a sweep as a job on a Ray cluster (its driver runs there)")
    submit.add_argument("--resume", action="store_true", help="continue the sweep a stopped job left")
    submit.add_argument("--storage", metavar="URI", help="as for run: a shared path or s3://… every node reaches")
    submit.add_argument(
        "--cluster-results",
        metavar="DIR",
        help="the sweep's records on the cluster (default: $SWEEP_RESULTS there, else ~/sweep-results)",
    )
    submit.set_defaults(func=_submit)
    for cmd, func, help in (
        ("jobs", _jobs, "the sweep jobs on a Ray cluster and their states"),
        ("logs", _logs, "a sweep job's output (NAME: the job, or a sweep's latest job)"),
        ("stop", _stop, "stop a sweep job: trials checkpointed, runs KILLED, resumable"),
    ):
        p = sub.add_parser(cmd, help=help)
        if cmd != "jobs":
            p.add_argument("name", help="the job (as `sweep jobs` lists it) or a sweep's name (its latest job)")
        if cmd == "logs":
            p.add_argument("-f", "--follow", action="store_true", help="print as it comes, until the job ends")
        p.set_defaults(func=func)
    for p in (submit, *(sub.choices[c] for c in ("jobs", "logs", "stop"))):
        p.add_argument("--address", help="the head's job server, http://HEAD:8265 (default: $RAY_ADDRESS)")
    name_cmd("status", "trials, states and the best so far").set_defaults(func=_status)
    export = sub.add_parser("export", help="the best-params table of one sweep, or several side by side")
    export.add_argument("names", nargs="+", metavar="NAME", help="sweeps (several: their best trials in one table)")
    export.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's, or ./mlruns.db)")
    export.add_argument("--experiment", help="MLflow experiment (default: the sweep's name)")
    export.add_argument("--format", choices=FORMATS, default="md", help="csv and json are for scripts (default: md)")
    export.add_argument("--group-by", metavar="KEY", help="a parameter or tag: the best trial of each value")
    export.add_argument("--top", type=_at_least_one, help="only the best K trials (of each sweep and group)")
    export.add_argument("-o", "--output", help="file to write (default: results/NAME/best_params.EXT)")
    export.set_defaults(func=_export)
    name_cmd("evaluate", "score the best trial on the test part").set_defaults(func=_evaluate)
    detect = name_cmd("detect", "draw the best detector's predictions (and proposals) on images")
    detect.add_argument("--images", required=True, help="a folder of images (any, not only the dataset's)")
    detect.add_argument("-o", "--output", required=True, help="folder for the PNG files")
    detect.add_argument("--proposals", action="store_true", help="also the first stage's top-k proposals, side by side")
    detect.add_argument("--top-k", type=int, default=50, help="proposals drawn per image (default 50)")
    detect.add_argument("--score", type=float, default=0.5, help="draw predictions scoring at least this (0.5)")
    detect.set_defaults(func=_detect)
    name_cmd("sync", "deliver tracking records kept while the store was unreachable").set_defaults(func=_sync)
    again = name_cmd("rerun", "re-run the best configurations with new seeds: mean ± 95%% CI")
    again.add_argument("--top", type=_at_least_one, default=3, help="how many of the best configurations (default 3)")
    again.add_argument("--seeds", type=int, default=5, help="new seeds for each (default 5)")
    again.add_argument("--address", help="join an existing Ray cluster")
    again.set_defaults(func=_rerun)
    report = sub.add_parser("report", help="a report folder: tables, figures, spec; report.md and report.html")
    report.add_argument("names", nargs="+", metavar="NAME", help="the sweeps to report on")
    report.add_argument("-o", "--output", help="folder to write (default: results/report/NAME[_NAME…])")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default: each sweep's, or ./mlruns.db)")
    report.set_defaults(func=_report)
    promote = name_cmd("promote", "register the best model in the MLflow Model Registry")
    promote.add_argument("--as", dest="registered_name", help="registered model name (default: the sweep's name)")
    promote.add_argument("--alias", default="champion", help="alias moved to the new version (default: champion)")
    promote.set_defaults(func=_promote)
    ui = sub.add_parser("ui", help="the MLflow UI on the sweeps' store, opened on a sweep's runs")
    ui.add_argument("name", nargs="?", help="the sweep whose runs to open (default: the store's experiments)")
    ui.add_argument("--tracking-uri")
    ui.add_argument("--experiment", help="MLflow experiment (default: the sweep's name)")
    ui.set_defaults(func=_ui)
    board = name_cmd("dashboard", "optuna-dashboard on the sweep's Optuna study")
    board.set_defaults(func=_dashboard)
    tb = name_cmd("tensorboard", "TensorBoard on the trials' event files")
    tb.set_defaults(func=_tensorboard)
    for p, port in ((ui, 5000), (board, 8080), (tb, 6006)):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=_port, default=port, help="port to serve on (default: %(default)s)")
    for p in sub.choices.values():
        p.add_argument("--results", default="results", help="folder of sweep results (default: results)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 every trial ran (completed, stopped early or diverged); 1 some trials errored;
    2 a user error, nothing started; 130 interrupted (continue with --resume)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())


def entry() -> None:
    """The ``sweep`` command: :func:`main`, then an immediate exit with its code. Every file and store write is
    complete by then; what is skipped is the interpreter's teardown of torch, Ray and SQLAlchemy, which takes
    seconds and does nothing for a command that has finished."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
