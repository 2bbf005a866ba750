"""Search for the best leukemic-blast classifier: Ray Tune + Optuna (TPE) + ASHA.

    python search/run.py                                   # small search on built-in demo data
    python search/run.py --trials 64 --data ~/C-NMC_Leukemia --out runs/cnmc
    python search/run.py --trials 64 --store s3://bucket/cnmc-224 --address auto --out s3://...
    python search/run.py --out runs/cnmc --resume           # continue a killed search

Each trial trains one sampled configuration on all training folds but ``--val-fold`` and
reports the held-out fold's weighted F1 every epoch; ASHA stops weak trials early, and a trial
that calls every held-out cell one class without ranking them (``constant``) is stopped at
ASHA's first rung. The final step (``search/final.py``) trains the best trial's configuration
once per held-out training fold (``--final cv``) or once on all folds (``--final all-folds``),
exports the members as one ensemble, ``best/model.keras``, with test-time augmentation, the
crop and the decision rule inside, and scores it once on ``validation_data``. Everything lands
under ``--out``: ``trials.csv``, ``study.db`` (Optuna), ``best/``, ``report.html``,
``summary.json``. When every trial was constant nothing is exported (a warning; exit 0, as when
every trial failed); when the final models' out-of-fold predictions are constant the export is
refused (an error, exit 1, after the summary and report are written).

``--resume`` continues a search killed at any point, also after this code was upgraded: the
searcher, scheduler and live view are rebuilt from the command, never unpickled. One search
runs per ``--out`` (``search.lock``); a full ``--out`` filesystem stops the run with an error
that keeps what was written whole (``search/faults.py``).
"""

from __future__ import annotations

import argparse
import errno
import functools
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from leukemia.imaging import CROPS  # noqa: E402  (after the path line above)
from search.results import (  # noqa: E402
    METRIC,
    MODE,
    SCORE,
    FinalResult,
    Trial,
    best_trial,
    collect_trials,
    selected_epoch,
    selected_score,
)
from search.settings import SearchSettings  # noqa: E402

log = logging.getLogger("search")

DEMO_PRESET = {"trials": 20, "max_epochs": 10, "image_size": 64, "grace_period": 2,
               "backbones": "small_cnn,unet,mobilenet_v3_small"}
FULL_DEFAULTS = {"trials": 64, "max_epochs": SearchSettings.max_epochs,
                 "image_size": SearchSettings.image_size, "grace_period": 2, "backbones": None}
STUDY = "cnmc-search"  # the Optuna study's name in --out/study.db


def _study_db(out: Path) -> str:
    return f"sqlite:///{out / 'study.db'}"


def resolve_store(args: argparse.Namespace) -> str:
    """The store URI to search on: ``--store``, or ``--data`` / the demo data ingested once."""
    from leukemia.imaging import check_crop
    from leukemia.store import Store, StoreError, ingest
    from search.cache import cache_root

    if args.store:
        Store(args.store)  # fails early, with the fix, if it is not a store
        return args.store
    if args.data:
        data = Path(args.data).expanduser().resolve()
    else:
        from leukemia.demo import write_demo_data

        data = cache_root() / "demo-data"
        if not (data / "C-NMC_Leukemia").is_dir():
            print(f"no --data or --store given: writing the built-in SYNTHETIC demo data to "
                  f"{data} (not real cells; pass --data C-NMC_Leukemia for the real dataset)",
                  file=sys.stderr)
            write_demo_data(data, overwrite=True)
        else:
            print(f"no --data or --store given: searching the built-in SYNTHETIC demo data in "
                  f"{data} (not real cells)", file=sys.stderr)
    crop, window = check_crop(args.crop, args.window)
    key = hashlib.sha256(str(data).encode()).hexdigest()[:10]
    mode = f"window{window}" if crop == "window" else crop  # another crop is another store
    store = str(cache_root() / "stores" / f"{data.name}-{key}-{args.image_size}px-{mode}")
    try:
        cached = Store(store)
        if cached.image_size == args.image_size and cached.crop == (crop, window):
            print(f"using the image store {store} (delete it to re-ingest)", file=sys.stderr)
            return store
    except StoreError:
        pass
    print(f"ingesting {data} into {store} ({args.image_size} px, crop {mode}) ...",
          file=sys.stderr)
    ingest(data, store, size=args.image_size, crop=crop, window=window, progress=True)
    return store


def settle_study(out: Path, trials: list[Trial]) -> None:
    """Mark FAIL the study's trials that Tune never ran or forgot, so none stays RUNNING.

    A driver killed between two of Tune's snapshots can leave an Optuna trial asked for a Tune
    trial the restored experiment does not know; left RUNNING, TPE's constant liar would count
    it as pending on every later suggestion.
    """
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=STUDY, storage=_study_db(out))
    ran = {t.trial_id for t in trials}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        rid = t.user_attrs.get("ray_trial_id")
        if rid in ran:
            continue
        optuna.Trial(study, t._trial_id).set_user_attr(
            "not_run", "asked just before the driver was killed; the resumed search replaced it")
        study.tell(t.number, state=TrialState.FAIL)
        log.info("study trial %d (Tune trial %s) was lost at a driver kill: marked FAIL",
                 t.number, rid)


def node_summary(trials: list[Trial]) -> dict[str, dict[str, int]]:
    """Per node: trials that ran there, worker processes, and store reads (all processes)."""
    nodes: dict[str, dict[str, Any]] = {}
    keys = dict.fromkeys(("node_id", "pid", "store_reads_in_process"))
    for t in trials:
        for h in ({**keys, **row} for row in t.history):
            if not h["node_id"]:
                continue
            n = nodes.setdefault(h["node_id"], {"trials": set(), "reads": {}})
            n["trials"].add(t.trial_id)
            reads = int(h["store_reads_in_process"] or 0)
            n["reads"][h["pid"]] = max(n["reads"].get(h["pid"], 0), reads)
    return {node: {"trials": len(n["trials"]), "worker_processes": len(n["reads"]),
                   "store_reads": sum(n["reads"].values())} for node, n in nodes.items()}


class _Help(argparse.RawDescriptionHelpFormatter):
    """Each flag's default shown from where it is defined; the epilog kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not (action.default is None or action.default is False or action.default == []
                or action.default == argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The flags. Defaults come from ``SearchSettings`` (or the presets above): one home each."""
    d = SearchSettings
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=_Help,
                                epilog=__doc__.split("\n", 2)[2])
    g = p.add_argument_group("data")
    g.add_argument("--data", help="C-NMC_Leukemia folder (ingested once into a cached store)")
    g.add_argument("--store", help="an image store (path or s3:// / gs:// URI)")
    g.add_argument("--crop", choices=list(CROPS), default=d.crop,
                   help="--data only: how ingest crops each cell (window: a --window px square "
                   "of the frame centred on the cell, keeping its size; see `leukemia ingest "
                   "--help`)")
    g.add_argument("--window", type=int, help="--data only: side of the window crop in px of "
                   f"the original frame (default: {d.window})")
    g.add_argument("--out", help="folder for everything the run writes (default runs/<time>)")
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, help=f"trials to run (default: {FULL_DEFAULTS['trials']}"
                   f"; demo data: {DEMO_PRESET['trials']})")
    g.add_argument("--max-epochs", type=int, help="epoch budget = ASHA max_t (default: "
                   f"{FULL_DEFAULTS['max_epochs']}; demo: {DEMO_PRESET['max_epochs']})")
    # grace 2, factor 4, 10 start-up trials: what benchmarks/searchers.py --sweep found on real
    # replayed learning curves (PERFORMANCE.md, "Searchers")
    g.add_argument("--grace-period", type=int, help="ASHA grace period in epochs (default: "
                   f"{FULL_DEFAULTS['grace_period']}, at most --max-epochs)")
    g.add_argument("--reduction-factor", type=int, default=4, help="ASHA reduction factor")
    g.add_argument("--startup-trials", type=int, default=10,
                   help="TPE's random start-up trials before it models the results")
    g.add_argument("--val-fold", type=int, default=d.val_fold, help="training fold held out")
    g.add_argument("--image-size", type=int, help="image side in px (default: "
                   f"{FULL_DEFAULTS['image_size']}; demo: {DEMO_PRESET['image_size']})")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    g.add_argument("--backbones", help="comma-separated backbones to search (default: all "
                   f"in search/space.py; demo: {DEMO_PRESET['backbones']}; with --weights "
                   "none both leave out what stayed constant from random init at this size, "
                   "search/space.py SCRATCH_CONSTANT)")
    g.add_argument("--weights", default=d.weights, choices=["none", "imagenet"],
                   help="start from ImageNet weights (imagenet: needs a download) or random")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="seeds the sampler, the trials and the final trainings")
    g.add_argument("--final", choices=["cv", "all-folds"], default="cv",
                   help="cv: the best configuration trained once per held-out training fold, "
                   "exported as one ensemble, its threshold chosen on the out-of-fold "
                   "predictions; all-folds: one model trained on all folds (threshold 0.5)")
    g.add_argument("--final-seeds", type=int, default=1,
                   help="train every final member with N seeds (N x folds members)")
    g.add_argument("--no-final", action="store_true", help="skip the final training")
    g.add_argument("--tta", action=argparse.BooleanOptionalAction, default=d.tta,
                   help="the exported model averages the 8 flips/90-degree rotations of a cell")
    g.add_argument("--decision-rule", choices=["0.5", "oof", "prior"], default=d.decision_rule,
                   help="how the exported model turns P(ALL) into a class: 0.5 ("
                   "measured to transfer best to new patients), oof (the threshold that "
                   "maximises weighted F1 on the out-of-fold predictions) or prior "
                   "(transductive: the share of a predicted batch called ALL matches training)")
    g.add_argument("--plugin", action="append", default=[],
                   help="a Python file imported in every worker (e.g. registering backbones)")
    g = p.add_argument_group("resources")
    g.add_argument("--address", help="Ray cluster address ('auto' or host:port); default: "
                   "start a local Ray")
    g.add_argument("--num-cpus", type=int, help="local Ray only: CPUs to declare")
    g.add_argument("--num-gpus", type=int, help="local Ray only: GPUs to declare")
    g.add_argument("--trials-per-gpu", type=int, help="trials sharing one GPU (default from "
                   "its memory: one per 8 GiB, at most 4)")
    g.add_argument("--gpus", type=int, help="GPUs to plan concurrency for (default: those the "
                   "cluster has now; set it on an autoscaling cluster that starts without GPUs)")
    g.add_argument("--cpus-per-trial", type=int, default=d.cpus_per_trial,
                   help="CPU threads of each CPU-only trial")
    g.add_argument("--cpu-only", action="store_true", help="ignore GPUs")
    g.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction,
                   help="float16 compute on GPUs (default: on when GPUs are used)")
    g = p.add_argument_group("run")
    g.add_argument("--resume", action="store_true", help="continue the search in --out after a "
                   "kill or crash (finished trials and final members are kept)")
    g.add_argument("--no-reuse-actors", action="store_true",
                   help="a fresh worker process per trial (slower; for benchmarks)")
    g.add_argument("--max-concurrent", type=int,
                   help="at most this many trials at once (default: what the resources allow)")
    g.add_argument("--max-failures", type=int, default=1,
                   help="retries of a failed trial from its last checkpoint")
    g.add_argument("-v", "--verbose", action="store_true", help="Ray's and the workers' logs")
    return p


def apply_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset flags: the demo preset without --data/--store, the full defaults otherwise."""
    from leukemia.models import backbone_spec
    from search.space import DEFAULT_BACKBONES, scratch_constant, scratch_note

    chosen = args.backbones is not None  # the user's list is respected, with a warning
    for key, value in (FULL_DEFAULTS if args.data or args.store else DEMO_PRESET).items():
        if getattr(args, key) is None:  # a default grace period never exceeds the budget
            setattr(args, key, min(value, args.max_epochs) if key == "grace_period" else value)
    if not chosen:
        base = args.backbones.split(",") if args.backbones else list(DEFAULT_BACKBONES)
        fits = [b for b in base if args.image_size >= backbone_spec(b).min_size
                and args.image_size % backbone_spec(b).multiple_of == 0]
        if len(fits) < len(base):
            print(f"at {args.image_size} px the search leaves out "
                  f"{', '.join(b for b in base if b not in fits)} (input too "
                  "small or not a legal size for them)", file=sys.stderr)
        dead = [b for b in fits if scratch_constant(b, args.image_size, args.weights)]
        if dead:
            print(f"at {args.image_size} px with --weights none the search leaves out "
                  f"{scratch_note(dead)}", file=sys.stderr)
        args.backbones = ",".join(b for b in fits if b not in dead)
    args.backbone_list = [b.strip() for b in args.backbones.split(",") if b.strip()]
    dead = [b for b in args.backbone_list if scratch_constant(b, args.image_size, args.weights)]
    if chosen and dead:
        print(f"warning: --backbones: {scratch_note(dead)}; expect their trials to be stopped "
              "as constant at the first rung", file=sys.stderr)
    args.out = (str(Path("runs") / time.strftime("%Y%m%d-%H%M%S")) if args.out is None
                else args.out.removeprefix("file://"))
    return args


def validate(args: argparse.Namespace) -> None:
    from leukemia.config import TrainConfig
    from search.trainable import load_plugins

    load_plugins([str(Path(p).resolve()) for p in args.plugin])
    if args.trials < 1:
        raise ValueError(f"--trials {args.trials}: must be at least 1")
    if args.grace_period < 1 or args.grace_period > args.max_epochs:
        raise ValueError(f"--grace-period {args.grace_period}: must be in 1..--max-epochs "
                         f"({args.max_epochs})")
    if args.startup_trials < 0:
        raise ValueError(f"--startup-trials {args.startup_trials}: must be at least 0")
    if args.reduction_factor < 2:
        raise ValueError(f"--reduction-factor {args.reduction_factor}: must be at least 2")
    for b in args.backbone_list:  # every backbone must be legal at this image size
        TrainConfig(backbone=b, image_size=args.image_size, epochs=args.max_epochs,
                    weights=args.weights if b not in ("small_cnn", "unet") else "none")


def main(argv: list[str] | None = None) -> int:
    args = apply_defaults(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from leukemia.dataset import DatasetError
    from leukemia.store import StoreError
    from search.faults import ResumeError, RunLockedError, unlock_out

    try:
        validate(args)
        return run(args, argv if argv is not None else sys.argv[1:])
    except (ValueError, DatasetError, StoreError, FileExistsError, FileNotFoundError,
            RunLockedError, ResumeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = args.out or "--out"
        print(f"error: no space left on the filesystem holding {where} ({e}). What was "
              f"written before is whole (files are replaced atomically). Free space there "
              f"(df -h {where}) and rerun the same command with --resume: finished trials and "
              "final members are kept", file=sys.stderr)
        return 1
    finally:
        unlock_out()


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """The search, in order: paths, store, Ray, tuner, trials, final, report, upload."""
    import ray

    from search.faults import HOLD_DIR_ENV, hold
    from search.report import write_trials_csv
    from search.trainable import ConstantModelError

    paths = resolve_paths(args, argv)
    out: Path = paths["out"]
    t0 = time.monotonic()
    os.environ[HOLD_DIR_ENV] = str(out)  # a local Ray's workers inherit it (hold_trial)
    hold("store", out)
    store = resolve_store(args)
    start_ray(args)
    settings, per_trial, slots = plan(args, store, remote=paths["remote"])
    tuner = build_tuner(args, settings, per_trial, slots, paths)
    t_fit = time.monotonic()
    results = tuner.fit()
    tune_seconds, search_seconds = time.monotonic() - t_fit, time.monotonic() - t0
    trials = collect_trials(results, args.max_epochs)
    settle_study(out, trials)
    write_trials_csv(out / "trials.csv", trials)
    refused = None
    try:
        final = run_final_step(args, settings, trials, out, per_trial)
    except ConstantModelError as e:  # the summary and the report still tell what happened
        final, refused = None, str(e)
    summary = write_summary(args, trials, final, slots, out,
                            search_seconds=search_seconds, tune_seconds=tune_seconds,
                            total_seconds=time.monotonic() - t0, refused=refused)
    hold("report", out)
    write_report(args, settings, trials, final, summary, slots, per_trial, out)
    ray.shutdown()
    if paths["remote"]:
        _upload(out, args.out)
    _print_summary(summary, args.out if paths["remote"] else out)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    return 0


def resolve_paths(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Where the run writes: a local folder, plus Ray's storage (``--out`` itself if a URI)."""
    from ray import tune

    from leukemia.files import atomic_write
    from search.cache import cache_root, is_remote
    from search.faults import ResumeError, lock_out

    remote = is_remote(args.out)
    # Ray writes trial checkpoints straight to --out (a URI or shared path); the study (SQLite),
    # trials.csv, best/ and the report are written locally and uploaded at the end.
    base, sep, query = args.out.partition("?")  # a URI may carry options: s3://b/p?region=..
    out = (cache_root() / "runs" / base.split("://", 1)[1].strip("/").replace("/", "_")
           if remote else Path(args.out).expanduser().resolve())
    storage = f"{base.rstrip('/')}{sep}{query}" if remote else str(out)
    exp_uri = f"{base.rstrip('/')}/tune{sep}{query}" if remote else str(out / "tune")
    command = " ".join(shlex.quote(a) for a in [sys.executable, "search/run.py", *argv])
    lock_out(out, command)  # first: a second search on this --out refuses, naming the first
    exists = tune.Tuner.can_restore(exp_uri) if remote else (out / "tune").exists()
    if exists and not args.resume:
        raise FileExistsError(f"{args.out} already holds a search; pass --resume to continue "
                              "it or choose another --out")
    if args.resume and not exists:
        if not (out / "command.txt").is_file():
            raise FileNotFoundError(f"--resume: {args.out} holds no search to continue")
        # stopped before Tune began (e.g. while ingesting): no trial ran, nothing to keep
        print(f"--resume: the search in {args.out} stopped before its first trial; starting "
              "it now", file=sys.stderr)
        args.resume = False
    elif not args.resume:
        atomic_write(out / "command.txt", command + "\n")
    if args.resume and not remote and not tune.Tuner.can_restore(exp_uri):
        raise ResumeError(
            f"--resume: {exp_uri} holds no Tune state (the search was stopped while Tune "
            f"started, before any trial was recorded); delete {exp_uri} and {out / 'study.db'} "
            "and rerun with --resume to start it again")
    return {"remote": remote, "out": out, "storage": storage, "exp_uri": exp_uri}


def start_ray(args: argparse.Namespace) -> None:
    """Join the cluster at ``--address``, or start a new local Ray (never one another
    ``ray start`` left on this machine)."""
    if not args.verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from search.connect import connect  # a cluster that is absent or refuses the token: one line

    # With reused workers, Ray gives a stopped trial's training thread 2 s to end before the
    # worker takes the next trial, which otherwise fails ("reset_config() ..."; Ray #29268).
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    env = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"]}
    local = not args.address
    connect(args.address or "local", runtime_env={"env_vars": env},
            num_cpus=args.num_cpus if local else None, num_gpus=args.num_gpus if local else None,
            include_dashboard=False, log_to_driver=args.verbose, configure_logging=True,
            logging_level=logging.INFO if args.verbose else logging.ERROR)


def plan(args: argparse.Namespace, store: str, *, remote: bool
         ) -> tuple[SearchSettings, dict[str, float], int]:
    """The search's fixed settings, each trial's resources, and how many trials run at once."""
    import ray

    from leukemia.store import Store
    from search.resources import plan_resources

    per_trial, slots, per_gpu = plan_resources(ray.cluster_resources(), args)
    slots = min(slots, args.max_concurrent or slots)
    hosts = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    if len(hosts) > 1 and not remote:
        print(f"warning: this cluster spans {len(hosts)} machines but --out {args.out} is a "
              "local path: every node writes trial checkpoints there, so it must be a shared "
              "filesystem (NFS/EFS) mounted at the same path on all nodes, or an s3:// / gs:// "
              "URI; otherwise trials fail when they checkpoint", file=sys.stderr)
    use_gpu = "GPU" in per_trial  # plan_resources gives a GPU share only to GPU trials
    crop, window = Store(store).crop
    settings = SearchSettings(
        store=store, image_size=args.image_size, batch_size=args.batch_size,
        max_epochs=args.max_epochs, weights=args.weights, val_fold=args.val_fold,
        seed=args.seed, mixed_precision=use_gpu if args.mixed_precision is None
        else args.mixed_precision, trials_per_gpu=per_gpu, cpus_per_trial=int(per_trial["CPU"]),
        plugins=tuple(str(Path(p).resolve()) for p in args.plugin), crop=crop, window=window,
        tta=args.tta, decision_rule=args.decision_rule)
    print(f"search: {args.trials} trials of {','.join(args.backbone_list)} at "
          f"{args.image_size} px, up to {args.max_epochs} epochs (ASHA grace "
          f"{args.grace_period}, factor {args.reduction_factor}); {slots} at a time with "
          f"{per_trial} each", file=sys.stderr)
    return settings, per_trial, slots


def build_tuner(args: argparse.Namespace, settings: SearchSettings, per_trial: dict[str, float],
                slots: int, paths: dict[str, Any]) -> Any:
    """A new Tuner, or the restored one, with the searcher (Optuna TPE told the truth about ASHA
    stops), scheduler and live view built from the command, never unpickled (a resume works
    across an upgrade of this code; ``search/faults.py``)."""
    import optuna
    from ray import tune

    from search.faults import TRIAL_DIRNAME, ConstantAwareASHA
    from search.faults import build_tuner as make_tuner
    from search.searcher import ConstantStopper, FidelityAwareOptunaSearch, LiveView
    from search.space import define_space
    from search.trainable import CONSTANT, train_trial

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, settings=settings),
        {k.lower(): v for k, v in per_trial.items()})
    space = functools.partial(define_space, backbones=args.backbone_list,
                              weights=args.weights, max_epochs=args.max_epochs)
    searcher = FidelityAwareOptunaSearch(
        space=space, metric=METRIC, mode=MODE, max_t=args.max_epochs,
        sampler=optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=args.startup_trials),
        storage=optuna.storages.RDBStorage(_study_db(paths["out"])), study_name=STUDY)
    scheduler = ConstantAwareASHA(
        ConstantStopper(args.grace_period, flag=CONSTANT), time_attr="training_iteration",
        max_t=args.max_epochs, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor)
    return make_tuner(
        trainable, exp_uri=paths["exp_uri"], resume=args.resume,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=args.trials, max_concurrent_trials=slots,
            reuse_actors=not args.no_reuse_actors, trial_dirname_creator=TRIAL_DIRNAME),
        run_config=tune.RunConfig(
            name="tune", storage_path=paths["storage"], verbose=1 if args.verbose else 0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=args.max_failures)),
        searcher=searcher, scheduler=scheduler,
        callbacks=[LiveView(METRIC, args.max_epochs, args.trials, score=SCORE)])


def run_final_step(args: argparse.Namespace, settings: SearchSettings, trials: list[Trial],
                   out: Path, per_trial: dict[str, float]) -> FinalResult | None:
    """Train and export the best configuration's final model(s) (``search/final.py``)."""
    from leukemia.store import Store
    from search.faults import hold
    from search.final import run_final

    best = best_trial(trials)
    if best is None:
        if any(t.best_objective is not None for t in trials):  # all of them constant
            print("warning: every trial predicted one class for every cell; nothing to export "
                  "(trials.csv: status constant). Try more epochs, a higher learning rate or "
                  "another backbone", file=sys.stderr)
        else:
            print("no trial produced a score; see trials.csv for the errors", file=sys.stderr)
        return None
    if args.no_final:
        return None
    hold("final", out)
    return run_final(best, settings, out, mode=args.final, seeds=args.final_seeds,
                     resources=per_trial, manifest=Store(settings.store).manifest)


def write_summary(args: argparse.Namespace, trials: list[Trial],
                  final: FinalResult | None, slots: int, out: Path, *,
                  search_seconds: float, tune_seconds: float, total_seconds: float,
                  refused: str | None = None) -> dict[str, Any]:
    """``summary.json``: the run's headline numbers (``refused``: why nothing was exported
    although the final ran)."""
    from leukemia.files import atomic_write

    best = best_trial(trials)
    f = final or FinalResult()  # every field None
    summary = {"search_seconds": round(search_seconds, 1), "tune_seconds": round(tune_seconds, 1),
               "concurrent_trials": slots, "total_seconds": round(total_seconds, 1),
               "trial_counts": {s: sum(t.status == s for t in trials)
                                for s in ("completed", "pruned", "constant", "failed")},
               "trial_epochs": sum(t.epochs_run for t in trials),
               "trial_epochs_full_budget": len(trials) * args.max_epochs,
               "best_trial": best.trial_id if best else None,
               "best_val_fold_weighted_f1": selected_score(best) if best else None,
               "best_epoch": selected_epoch(best) if best else None,
               "threshold": f.threshold, "validation": f.metrics_at_threshold,
               "validation_at_0.5": f.metrics, "cv": f.cv,
               "export_refused": refused, "nodes": node_summary(trials)}
    atomic_write(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def write_report(args: argparse.Namespace, settings: SearchSettings, trials: list[Trial],
                 final: FinalResult | None, summary: dict[str, Any], slots: int,
                 per_trial: dict[str, float], out: Path) -> None:
    """``report.html``: one self-contained page of the whole run."""
    import optuna

    from leukemia.store import Store, crop_text
    from search import report

    manifest = Store(settings.store).manifest
    shown = {"trials": args.trials, "max_epochs (ASHA max_t)": args.max_epochs,
             "grace_period": args.grace_period, "reduction_factor": args.reduction_factor,
             "image_size": args.image_size, "crop": crop_text(manifest),
             "batch_size": args.batch_size, "val_fold": args.val_fold,
             "backbones": ", ".join(args.backbone_list), "weights": args.weights,
             "seed": args.seed, "store": settings.store, "final": args.final,
             "test-time augmentation": "on" if settings.tta else "off",
             "concurrent trials": slots, "resources per trial": str(per_trial),
             "search wall time (s)": summary["search_seconds"],
             "trial-epochs used / full budget":
                 f"{summary['trial_epochs']} / {summary['trial_epochs_full_budget']}"}
    overview = {"counts": {k: manifest.get(k) for k in ("splits", "folds", "patients")},
                "samples": (final.samples if final else None) or {}}
    report.write_report(out / "report.html", trials=trials, final=final,
                        study=optuna.load_study(study_name=STUDY, storage=_study_db(out)),
                        command=(out / "command.txt").read_text().strip(), settings=shown,
                        max_t=args.max_epochs, overview=overview)


def _upload(local: Path, uri: str) -> None:
    """Copy the run's local artefacts (not tune/, already there) to ``uri``."""
    import pyarrow.fs as pafs

    from search.faults import LOCK, hold

    fs, root = pafs.FileSystem.from_uri(uri)
    for i, item in enumerate(sorted(local.iterdir())):
        if item.name in ("tune", LOCK) or item.name.startswith("."):
            continue
        if i:
            hold("upload", local)  # after the first item: killed half-way through the upload
        dest = f"{root.rstrip('/')}/{item.name}"
        if item.is_dir():
            fs.create_dir(dest, recursive=True)
        pafs.copy_files(str(item), dest, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    print(f"uploaded trials.csv, study.db, best/, report.html to {uri}", file=sys.stderr)


def _print_summary(summary: dict[str, Any], out: Path | str) -> None:
    c = summary["trial_counts"]
    print(f"\ndone in {summary['total_seconds']:.0f} s: {c['completed']} completed, "
          f"{c['pruned']} stopped by ASHA, {c['constant']} constant, {c['failed']} failed; "
          f"trial-epochs {summary['trial_epochs']} of {summary['trial_epochs_full_budget']} "
          "(full budget)")
    if summary["best_trial"]:
        print(f"best trial {summary['best_trial']}: held-out fold weighted F1 "
              f"{summary['best_val_fold_weighted_f1']:.4f} at epoch {summary['best_epoch']}")
    if cv := summary["cv"]:
        print(f"cross-validated (out-of-fold, {cv['n']} cells, {cv['n_patients']} patients, "
              f"threshold {summary['threshold']:.3f}): weighted F1 {cv['weighted_f1']:.4f}"
              f"{_ci(cv)}, sensitivity {_fmt(cv['sensitivity'])}, specificity "
              f"{_fmt(cv['specificity'])}, roc auc {_fmt(cv['roc_auc'])}")
    if v := summary["validation"]:
        rest = ", ".join(f"{k.replace('_', ' ')} {_fmt(v[k])}" for k in (
            "accuracy", "balanced_accuracy", "sensitivity", "specificity", "roc_auc"))
        print(f"validation_data ({v['n']} images, {v['n_patients']} patients): weighted F1 "
              f"{v['weighted_f1']:.4f}{_ci(v)}, {rest}")
    print(f"wrote trials.csv, study.db, best/, report.html to {out}")


def _ci(m: dict[str, Any]) -> str:
    ci = m["weighted_f1_ci95"]
    return f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


if __name__ == "__main__":
    sys.exit(main())
