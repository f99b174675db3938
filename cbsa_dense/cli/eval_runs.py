"""Where ``validate``, ``test`` and ``predict`` write: an evaluation folder, never a new training version.

Lightning's ``CSVLogger``/``TensorBoardLogger`` give every run the next ``version_N``, so evaluating
``runs/demo_seg/version_0/checkpoints/last.ckpt`` used to create ``runs/demo_seg/version_1``: a folder
that looks like a second training run, with the test metrics in it. And the config's ``ModelCheckpoint``,
restored from the checkpoint for nothing, warned (``lightning/pytorch/callbacks/model_checkpoint.py``,
``ModelCheckpoint.load_state_dict``): "The dirpath has changed from 'runs/demo_seg/version_0/checkpoints'
to 'runs/demo_seg/version_1/checkpoints', therefore `best_model_score`, `kth_best_model_path`,
`kth_value`, `last_model_path` and `best_k_models` won't be reloaded. Only `best_model_path` will be
reloaded."

Layout (as with MMSegmentation's ``tools/test.py``, whose logs go to a timestamped folder of the work dir
that the training wrote to: the evaluation sits with the run it evaluates, one folder per evaluation)::

    runs/demo_seg/version_0/                     the training run (logger save_dir / name / version_N)
        checkpoints/last.ckpt
        eval/test-20250101-120000/               cbsa-dense test --ckpt_path .../version_0/checkpoints/last.ckpt
            metrics.csv, hparams.yaml, config.yaml, test_per_class_iou.json (segmentation),
            test_results.json (detection)
        eval/predict-20250101-120500/predictions/     cbsa-dense predict (segmentation label maps, overlays)
    runs/demo_seg/eval/test-20250101-121000/     a checkpoint from elsewhere (or none): the logger's
                                                 ``<save_dir>/<name>/eval/``

* The run directory of a checkpoint is the folder above its ``checkpoints/`` folder, when that folder is
  inside the configured logger's ``<save_dir>/<name>`` (a run of this config), or, when no logger is
  configured (``test --ckpt_path X --data ...`` without the training config: Lightning's default
  ``lightning_logs``), when it holds the ``config.yaml`` / ``hparams.yaml`` of a training run and is writable. A checkpoint anywhere else (downloaded, copied,
  read-only) is evaluated into ``<save_dir>/<name>/eval/``: nothing is written next to foreign files.
* The folder is ``<subcommand>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3`` ... when it already exists). Lightning
  counts only ``version_*`` folders, so ``eval/`` never shifts the numbering of training runs.
* The loggers of the run write there (their ``version`` is set to the folder, relative to their root, in
  the config before they are built; an unset logger becomes the one ``Trainer`` would build), so
  ``trainer.log_dir`` is the folder, and so are the files the tasks write there:
  per-class IoU and results json, predictions, the saved ``config.yaml``. Other loggers (W&B, MLflow ...)
  keep their own naming. With ``logger: false`` there are no versions: the outputs go to the trainer's
  ``default_root_dir`` as configured.
* What the user sets explicitly wins: a logger ``version`` (``--trainer.logger.init_args.version``) is
  kept, and ``--model.init_args.predict_dir`` / ``results_dir`` keep sending those outputs where they say.
* Checkpoint callbacks (``ModelCheckpoint``, ``TaskCheckpoint``) are taken out of the trainer: evaluation
  saves no checkpoint, and restoring their training state is what printed the dirpath message. The
  checkpoint-callback states saved in the checkpoint are handed to inert stand-ins under the same keys
  instead (without them Lightning warns "Be aware that when using `ckpt_path`, callbacks used to create
  the checkpoint need to be provided during `Trainer` instantiation ...", ``lightning/pytorch/trainer/
  call.py``), also when the training run used another checkpoint callback than the evaluation config.
  The saved states of the training run's other callbacks (``ExactResume``, ``AttentionTransfer`` ...) are
  taken the same way when the evaluation runs without them (``predict --images`` has no training config):
  an evaluation does not resume training, so none of them is missing.
* Under DDP every process re-runs the command; the launched processes inherit the folder name from the
  first (``CBSA_DENSE_EVAL_FOLDER``), so all ranks agree. Only rank 0 prints.
* The command prints where its outputs are: ``--model.init_args.predict_dir`` (segmentation ``predict``:
  ``labels/``, ``overlays/``) or ``results_dir`` (detection ``test``/``predict``) when set, else the evaluation
  folder; when they differ, the evaluation folder (config, logs) is printed on a second line.
* A command that fails before writing anything the user asked for leaves no folder behind that it created:
  :func:`discard_failed_evaluation` (around the command) removes the evaluation folder when it holds only the
  run's own bookkeeping (``config.yaml``, ``hparams.yaml``, TensorBoard event files), an output folder it
  created that is still empty, and the parents it created for them (``eval/``, ``lightning_logs/``) once empty.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

__all__ = ["EVAL_FOLDER_ENV", "prepare_eval_run", "set_eval_logger_versions", "discard_failed_evaluation",
           "outputs_location"]

#: Environment variable through which DDP processes launched by the first one get its folder name.
EVAL_FOLDER_ENV = "CBSA_DENSE_EVAL_FOLDER"


def _is_launched_rank() -> bool:
    """True in a process started by Lightning's DDP launcher (or a cluster) as a rank other than 0."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _ckpt_run_dir(ckpt_path: str | os.PathLike | None, root: Path, default_logger: bool = False) -> Path | None:
    """The training run of ``ckpt_path`` (``<run>/checkpoints/x.ckpt``) when it lies inside ``root``."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    ckpt_dir = Path(ckpt_path).parent
    if ckpt_dir.name != "checkpoints":
        return None
    run = ckpt_dir.parent
    if _inside(run, root):
        return run
    # Evaluated without a logger configured (``test --ckpt_path X --data ...`` without the training config:
    # Lightning's default ``lightning_logs``): still beside the run when the folder is recognizably a training
    # run (the config LightningCLI saved there) and can be written to. A logger the user configured wins.
    if (default_logger and any((run / name).is_file() for name in ("config.yaml", "hparams.yaml"))
            and os.access(run, os.W_OK)):
        return run
    return None


def _base_dir(ckpt_path, root: Path, default_logger: bool) -> Path:
    """``<run of the checkpoint>/eval`` or ``<logger root>/eval``."""
    return (_ckpt_run_dir(ckpt_path, root, default_logger) or root) / "eval"


def _folder_name(subcommand: str, bases: list[Path]) -> str:
    inherited = os.environ.get(EVAL_FOLDER_ENV)
    if inherited and _is_launched_rank():
        return inherited
    stem = f"{subcommand}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, count = stem, 1
    while any((base / name).exists() for base in bases):
        count += 1
        name = f"{stem}-{count}"
    os.environ[EVAL_FOLDER_ENV] = name
    return name


class _IgnoredCheckpointState(Callback):
    """Takes the saved state of a checkpoint callback of the training run, and does nothing with it."""

    def __init__(self, state_key: str) -> None:
        self._state_key = state_key

    @property
    def state_key(self) -> str:
        return self._state_key

    def load_state_dict(self, state_dict: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}


def _stored_callback_states(ckpt_path, checkpoint: dict | None = None) -> list[str]:
    """Keys of the callback states saved in ``ckpt_path`` (or in ``checkpoint``, when the caller has read it
    already). The keys carry the training config's class and settings (``TaskCheckpoint{'monitor':
    'val_miou', ...}``), which need not match the evaluation config's."""
    if checkpoint is None:
        if not ckpt_path or not Path(ckpt_path).is_file():
            return []
        from cbsa_dense.errors import UserError
        from cbsa_dense.models.checkpoint import read_checkpoint

        try:
            checkpoint = read_checkpoint(ckpt_path, mmap=True)
        except UserError:
            return []                   # an unreadable checkpoint is reported when Lightning loads it
    states = checkpoint.get("callbacks") or {}
    return [key for key in states if isinstance(key, str)]


def _logger_class(spec) -> type | None:
    class_path = getattr(spec, "class_path", None)
    if not isinstance(class_path, str):
        return None
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def _default_logger(default_root_dir) -> Namespace | None:
    """The logger ``Trainer`` builds when none is configured, as a config (``None`` under SLURM, where it is
    named after the job): TensorBoard when ``tensorboard`` or ``tensorboardX`` is installed, else CSV."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.job_id() is not None:
        return None
    tensorboard = any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))
    cls = TensorBoardLogger if tensorboard else CSVLogger
    return Namespace(class_path=f"{cls.__module__}.{cls.__name__}",
                     init_args=Namespace(save_dir=str(default_root_dir or os.getcwd()), name="lightning_logs"))


def set_eval_logger_versions(trainer_config, subcommand: str, ckpt_path: str | os.PathLike | None) -> Path | None:
    """Point the CSV/TensorBoard loggers of a parsed ``validate``/``test``/``predict`` trainer config at an
    evaluation folder (see the module doc) by setting their ``version`` before they are built; a logger left
    unset becomes the one ``Trainer`` would build by default. Loggers with a version of their own, other
    loggers and ``logger: false`` are left alone. Returns the folder, or ``None`` when no logger was set.

    Call it before the trainer is instantiated (``LightningCLI.before_instantiate_classes``).
    """
    logger = trainer_config.get("logger")
    if logger is False:
        return None
    if logger is None or logger is True:
        logger = _default_logger(trainer_config.get("default_root_dir"))
        if logger is None:
            return None
        trainer_config["logger"] = logger
    versioned = []
    for spec in logger if isinstance(logger, list) else [logger]:
        cls = _logger_class(spec)
        init_args = getattr(spec, "init_args", None)
        if cls is None or not issubclass(cls, (CSVLogger, TensorBoardLogger)) or init_args is None:
            continue
        if init_args.get("version") is not None or not init_args.get("save_dir"):
            continue
        name = init_args.get("name", "lightning_logs")
        root = Path(init_args["save_dir"]) / name if name else Path(init_args["save_dir"])
        default = issubclass(cls, TensorBoardLogger) and name == "lightning_logs"
        versioned.append((init_args, root, _base_dir(ckpt_path, root, default)))
    if not versioned:
        return None
    folder = _folder_name(subcommand, [base for _, _, base in versioned])
    for init_args, root, base in versioned:
        version = os.path.relpath(base / folder, root)              # log_dir = root_dir / version
        init_args["version"] = str((base / folder).absolute()) if version.startswith("..") else version
    return versioned[0][2] / folder


def outputs_location(subcommand: str, model, directory: Path) -> Path:
    """Where ``subcommand``'s outputs go: the task's ``predict_dir`` (segmentation ``predict``: ``labels/``,
    ``overlays/``) or ``results_dir`` (detection ``test`` results json, ``predict`` json and overlays) when set,
    else ``directory`` (the evaluation folder, where the tasks write by default)."""
    chosen = None
    if subcommand == "predict":
        chosen = getattr(model, "predict_dir", None) or getattr(model, "results_dir", None)
    elif subcommand == "test":
        chosen = getattr(model, "results_dir", None)
    return Path(chosen) if chosen else directory


@rank_zero_only
def _announce(subcommand: str, outputs: Path, directory: Path) -> None:
    print(f"{subcommand} outputs: {outputs}", flush=True)
    if outputs != directory:
        print(f"{subcommand} config and logs: {directory}", flush=True)


def prepare_eval_run(trainer, subcommand: str, ckpt_path: str | os.PathLike | None,
                     checkpoint: dict | None = None, model=None) -> Path:
    """Replace the checkpoint callbacks of the trainer of ``validate``/``test``/``predict`` by inert takers of
    their saved states (and take the saved states of the training's other callbacks that the evaluation runs
    without the same way), print ``<subcommand> outputs: <dir>`` (rank 0: :func:`outputs_location` of ``model``;
    its loggers were pointed at the evaluation folder by :func:`set_eval_logger_versions`) and return the
    evaluation folder. ``checkpoint``: ``ckpt_path`` already read by the caller. Under
    :func:`discard_failed_evaluation`, the folders not there yet are noted, to be removed if the command fails.

    Call it after the trainer is built and before it runs (``LightningCLI.before_<subcommand>``).
    """
    kept = [callback for callback in trainer.callbacks if not isinstance(callback, Checkpoint)]
    kept_keys = {callback.state_key for callback in kept}
    stored = _stored_callback_states(ckpt_path, checkpoint)
    trainer.callbacks[:] = kept + [_IgnoredCheckpointState(key) for key in stored
                                   if key not in kept_keys]

    if trainer.loggers:                 # its version set by set_eval_logger_versions, or the user's own
        logger = trainer.logger
        directory = Path(getattr(logger, "log_dir", None) or logger.save_dir or trainer.default_root_dir)
    else:
        directory = Path(trainer.default_root_dir)                   # logger: false
    outputs = outputs_location(subcommand, model, directory)
    noted = _NEW_FOLDERS.get()
    if noted is not None:
        for logger in trainer.loggers:
            log_dir = getattr(logger, "log_dir", None)
            if log_dir:
                noted.add_new(Path(log_dir), bookkeeping=True)
        noted.add_new(outputs, bookkeeping=outputs == directory)
    _announce(subcommand, outputs, directory)
    return directory


#: Files a run writes into its folder before any work: the folder holding only these has no results.
_BOOKKEEPING = ("config.yaml", "hparams.yaml", "metrics.csv")
_BOOKKEEPING_PREFIXES = ("events.out.tfevents.", ".cbsa-dense-write-test-")


class _NewFolders:
    """Folders an evaluation is about to create, each with the topmost of its parents not there yet."""

    def __init__(self) -> None:
        self.folders: list[tuple[Path, Path, bool]] = []

    def add_new(self, folder: Path, bookkeeping: bool) -> None:
        folder = folder.absolute()
        if folder.exists():
            return
        top = folder
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        self.folders.append((folder, top, bookkeeping))

    def discard(self) -> None:
        """Remove each noted folder that holds no result (only bookkeeping files, or nothing), then its empty
        parents up to the topmost one the evaluation created."""
        for folder, top, bookkeeping in self.folders:
            if not folder.is_dir() or _holds_results(folder, bookkeeping):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            parent = folder.parent
            while folder != top and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                if parent == top:
                    break
                parent = parent.parent


def _holds_results(folder: Path, bookkeeping: bool) -> bool:
    for path in folder.rglob("*"):
        if path.is_dir():
            continue
        if not bookkeeping or not (path.name in _BOOKKEEPING and (path.name != "metrics.csv" or _empty_csv(path))
                                   or path.name.startswith(_BOOKKEEPING_PREFIXES)):
            return True
    return False


def _empty_csv(path: Path) -> bool:
    """A metrics.csv without a logged row (at most its header line)."""
    try:
        return len(path.read_text().strip().splitlines()) <= 1
    except OSError:
        return False


_NEW_FOLDERS: contextvars.ContextVar[_NewFolders | None] = contextvars.ContextVar("cbsa_dense_eval_folders",
                                                                                   default=None)


@contextlib.contextmanager
def discard_failed_evaluation() -> Iterator[None]:
    """Around a ``validate``/``test``/``predict`` command: when it raises, the folders it created for its outputs
    (noted by :func:`prepare_eval_run`) are removed unless they hold results (see the module doc). Rank 0
    only; the error propagates unchanged."""
    noted = _NewFolders()
    token = _NEW_FOLDERS.set(noted)
    try:
        yield
    except BaseException:
        if not _is_launched_rank():
            noted.discard()
        raise
    finally:
        _NEW_FOLDERS.reset(token)
