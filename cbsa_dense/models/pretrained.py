"""What an encoder's ``pretrained`` names, turned into a state dict: a local file or timm's pretrained weights.

:func:`read_pretrained` accepts

- a local weights file (``.safetensors``, ``.pth``/``.pt``, ``.bin``, ``.pth.tar``): read safely by
  :func:`~cbsa_dense.models.checkpoint.read_checkpoint`. A checkpoint of this project (``.ckpt`` with
  ``hyper_parameters._class_path``) is refused with a pointer to the task's ``weights`` setting, which loads
  those;
- a timm model name with pretrained weights, tagged or not (``vit_small_patch14_dinov2.lvd142m``,
  ``vit_base_patch16_224.augreg2_in21k_ft_in1k``; untagged = timm's default tag): timm's pretrained config
  says where the weights live, and timm's own loader fetches them (``load_state_dict_from_hf``: the
  Hugging Face hub and its cache, ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1``; torch hub's cache
  for the few weights only at a URL);
- ``hf-hub:org/repo`` as timm accepts it (timm's ``config.json`` and weights of that hub repo).

Nothing builds a timm model: the tensors come in timm's layout and the encoder adapts and checks them.
Problems are one line (:class:`~cbsa_dense.errors.UserError`): a name that is neither a file nor a timm
pretrained name (with close matches), weights that are not in the local cache and cannot be downloaded (with
how to get them), this project's checkpoint given as encoder weights.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import sys
from pathlib import Path

import torch

from cbsa_dense.errors import CheckpointError, ConfigError
from cbsa_dense.models.checkpoint import read_checkpoint, state_dict_of

log = logging.getLogger(__name__)

#: File suffixes that make ``pretrained`` a path (a missing one is an error, not a timm model name).
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors")

#: Prefixes of hub repo ids as timm's ``create_model`` accepts them (``hf_hub:`` is timm's older spelling).
HUB_PREFIXES = ("hf-hub:", "hf_hub:")

_FILE_KINDS = ".safetensors/.pth/.bin"


def read_pretrained(source: str | Path) -> dict[str, torch.Tensor]:
    """The tensors ``pretrained=source`` names, in the layout of their origin (timm's for timm names).

    Raises:
        CheckpointError: an unreadable or missing file (:func:`read_checkpoint`); a checkpoint of this
            project; timm weights that are not in the local cache and could not be downloaded.
        ConfigError: ``source`` is neither an existing file nor a timm name with pretrained weights.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.exists() or path.suffix in WEIGHT_SUFFIXES:
        return read_weights_file(path)
    if text.startswith(HUB_PREFIXES):
        return _fetch_hub_repo(text)
    if is_timm_pretrained_name(text):
        return _fetch_timm(text)
    raise ConfigError(_unknown_name_message(text))


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A local weights file's tensors; a checkpoint of this project is a :class:`CheckpointError`."""
    checkpoint = read_checkpoint(path, what="weights")
    task_class = project_checkpoint_class(checkpoint)
    if task_class is not None:
        raise CheckpointError(
            f"{path} is a cbsa-dense checkpoint ({task_class}), not encoder weights: load it with "
            f"--model.init_args.weights {path} (model.init_args.weights in a config: it fills the encoder and the "
            f"head) and leave the encoder's pretrained unset")
    return state_dict_of(checkpoint, path)


def project_checkpoint_class(checkpoint: dict) -> str | None:
    """The task class name of a checkpoint written by this project (Lightning ``state_dict`` with
    ``hyper_parameters._class_path``, or ``model.encoder.*`` tensors), else ``None``."""
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict):
        return None
    hparams = checkpoint.get("hyper_parameters")
    class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    if class_path:
        return str(class_path).rsplit(".", 1)[-1]
    if any(str(k).startswith("model.encoder.") for k in state_dict):
        return "a task checkpoint"
    return None


def is_timm_pretrained_name(name: str) -> bool:
    """Whether timm has pretrained weights under ``name`` (``arch.tag``, or ``arch`` for its default tag)."""
    import timm

    arch, _, tag = name.partition(".")
    if tag:
        return name in timm.list_pretrained(f"{arch}.*")
    return timm.is_model(arch) and timm.is_model_pretrained(arch)


def _unknown_name_message(name: str) -> str:
    import timm

    arch = name.partition(".")[0]
    if "/" in name or "\\" in name:
        hint = f" (no file {name} exists" + (f"; a hub repo is written hf-hub:{name})" if name.count("/") == 1
                                              and not name.startswith((".", "/", "~")) else ")")
    elif timm.is_model(arch):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        shown = ", ".join(tags[:8]) + (f", ... ({len(tags)} in all)" if len(tags) > 8 else "")
        hint = (f" (timm's pretrained tags for {arch}: {shown})" if tags
                else f" (timm has no pretrained weights for {arch})")
    else:
        close = difflib.get_close_matches(name, timm.list_pretrained(), n=4, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (f"pretrained={name!r} is neither an existing file nor a timm model name with pretrained "
            f"weights{hint}: give a local {_FILE_KINDS} file, a name from timm.list_pretrained('vit_*') such as "
            f"vit_small_patch14_dinov2.lvd142m, or hf-hub:org/repo")


# --------------------------------------------------------------------------------------------- fetching
def _fetch_timm(name: str) -> dict[str, torch.Tensor]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return _fetch(name, cfg.to_dict() if cfg is not None else {})


def _fetch_hub_repo(name: str) -> dict[str, torch.Tensor]:
    from timm.models import load_model_config_from_hf

    repo = name.split(":", 1)[1]
    try:
        cfg = load_model_config_from_hf(repo)[0]
    except Exception as err:  # noqa: BLE001 - classified below; others keep their traceback
        raise _fetch_error(name, repo, err) from err
    return _fetch(name, dict(cfg))


def _fetch(name: str, cfg: dict) -> dict[str, torch.Tensor]:
    """Fetch the weights ``cfg`` (a timm pretrained config) points to, where timm's ``load_pretrained`` would:
    a hub repo first, else the URL (torch hub's cache)."""
    from timm.models import load_state_dict_from_hf

    repo, filename, url = cfg.get("hf_hub_id"), cfg.get("hf_hub_filename"), cfg.get("url")
    custom = cfg.get("custom_load")
    if repo and custom != "hf":
        where = repo
        log.info("pretrained=%s: timm's weights from the Hugging Face hub repo %s (or its local cache)", name, repo)
        fetch = functools.partial(load_state_dict_from_hf, repo, *([filename] if filename else []))
    elif url and not custom:
        where = url
        log.info("pretrained=%s: timm's weights from %s (or torch hub's cache)", name, url)
        fetch = functools.partial(torch.hub.load_state_dict_from_url, url, map_location="cpu", weights_only=True)
    else:
        fetch = None
    if fetch is not None:
        try:
            return fetch()
        except Exception as err:  # noqa: BLE001 - classified below; others keep their traceback
            raise _fetch_error(name, where, err) from err
    raise ConfigError(f"pretrained={name!r}: timm loads these weights with model-specific code "
                      f"(custom_load), which ViTEncoder does not run: save them with timm on a connected machine "
                      f"(python -c \"import timm, torch; torch.save(timm.create_model('{name}', pretrained=True)"
                      f".state_dict(), 'w.pth')\") and give the file")


def _hub_settings() -> tuple[str, bool]:
    """The cache folder and offline flag of ``huggingface_hub`` (timm's hub library, which comes with timm) as
    the failed fetch used them: read from its loaded ``constants`` module (set from ``HF_HOME``,
    ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` when it was imported), else from those variables."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        return str(constants.HF_HUB_CACHE), bool(constants.HF_HUB_OFFLINE)
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface")
    cache = os.environ.get("HF_HUB_CACHE") or str(Path(home).expanduser() / "hub")
    return cache, os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _fetch_error(name: str, where: str | None, err: BaseException) -> BaseException:
    """One-line error for a failed fetch; ``err`` itself when it is not a download or cache problem.

    The hub's errors are told apart by class name (its ``RepositoryNotFoundError``, ``GatedRepoError``,
    ``RevisionNotFoundError``; ``LocalEntryNotFoundError``, ``OfflineModeIsEnabled`` and its HTTP errors are
    ``OSError``s, as is urllib's ``URLError``), so that nothing here imports ``huggingface_hub`` itself.
    """
    kinds = {cls.__name__ for cls in type(err).__mro__}
    if kinds & {"RepositoryNotFoundError", "RevisionNotFoundError"}:        # GatedRepoError included
        return ConfigError(f"pretrained={name!r}: the Hugging Face hub has no repo {where} or refuses it "
                           f"({type(err).__name__}); check the name, log in (hf auth login) for a gated repo, or "
                           f"give a local {_FILE_KINDS} file")
    if not (isinstance(err, OSError) or type(err).__module__.split(".")[0] in ("httpx", "httpx2", "requests",
                                                                               "urllib3")):
        return err
    hub = bool(where) and not str(where).startswith(("http://", "https://"))
    cache, offline_set = _hub_settings() if hub else (str(Path(torch.hub.get_dir()) / "checkpoints"), False)
    if offline_set:
        tried = "HF_HUB_OFFLINE=1 is set, so no download was tried"
        offline = ""
    else:
        reason = " ".join(str(err).split())
        reason = reason if len(reason) <= 100 else reason[:100] + "..."
        tried = f"the download failed ({type(err).__name__}: {reason})"
        offline = "; with the cache in place, HF_HUB_OFFLINE=1 skips the network" if hub else ""
    return CheckpointError(
        f"pretrained={name!r}: its weights ({where}) are not in the local cache {cache} and {tried}; on a "
        f"machine with network run python -c \"import timm; timm.create_model('{name}', pretrained=True)\" and "
        f"copy that cache here{' (or point HF_HUB_CACHE at a copy)' if hub else ''}{offline}, or give a "
        f"local {_FILE_KINDS} file")
