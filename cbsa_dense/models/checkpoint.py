"""Reading checkpoint and weight files, and loading tensors into a module with a report. No Lightning imports.

What a checkpoint of a task holds (its stored task config, class count, evaluation protocol) is the task
layer's business: :mod:`cbsa_dense.tasks.checkpoint_format`.

Every file goes through :func:`read_checkpoint`: ``torch.load(weights_only=True)`` (a pickle could run
code) or safetensors, with one-line :class:`~cbsa_dense.errors.CheckpointError` messages for a missing
file, a directory, an empty, truncated or foreign file, and a file holding Python objects.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import sys
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cbsa_dense.errors import CheckpointError, CheckpointNotFoundError

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")

def _first_line(err: BaseException, limit: int = 160) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))                # torch bolds a phrase with ANSI codes
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:                                    # the informative line of torch's long messages
        if line.startswith(("Unsupported global", "Unsupported operand", "Trying to load unsupported")):
            return line[:limit]
    text = lines[0] if lines else type(err).__name__
    return (text if len(text) <= limit else text[:limit] + "...")


#: the first bytes of a file written by ``torch.save`` in its legacy (non-zip) format: its pickled magic number
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def _first_zip_entry(head: bytes) -> str:
    """The name of the first entry of a zip file's local header (``archive/data.pkl`` for torch.save)."""
    length = int.from_bytes(head[26:28], "little")
    return head[30:30 + length].decode("utf-8", "replace")


def _load_error(path: Path, what: str, size: int, head: bytes, is_zip: bool, err: Exception) -> CheckpointError:
    """The one-line error of a file ``torch.load(weights_only=True)`` refused, by what the file is.

    What torch raises for each (torch 2.x): a real pickle holding Python objects (torch.save of a custom
    class) -> ``UnpicklingError`` "Weights only load failed ... Unsupported global: GLOBAL module.Class";
    random bytes, a plain ``pickle.dump`` file or any non-zip file -> the weights-only unpickler stops on
    the first byte it does not accept ("Weights only load failed ... Unsupported operand N", or a
    ``KeyError`` / ``EOFError``); a zip that is not a torch archive -> ``RuntimeError`` ("file in archive is
    not in a subdirectory", or no ``data.pkl``); a torch zip cut short -> ``RuntimeError`` "failed finding
    central directory" (the file starts with ``PK\\x03\\x04`` but is no longer a readable zip); a legacy
    torch file cut short -> ``EOFError`` (in its pickle) or ``RuntimeError`` "unexpected EOF" (in its tensor
    data). Only pickles (a torch.save of Python objects, a plain ``pickle.dump`` file) get the re-save advice.
    """
    detail = _first_line(err)
    magic = head[:4]
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if refused or "Unsupported global" in str(err):
        what_refused = refused.group(1) if refused else detail
        return CheckpointError(f"cannot read {path} as a weights-only torch checkpoint: it holds Python "
                               f"objects that a safe load refuses ({what_refused}); re-save it with tensors "
                               f"and plain containers only (e.g. torch.save(model.state_dict(), ...))")
    if is_zip:
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile):
            names = []
        if not any(name.endswith("data.pkl") for name in names):
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            return CheckpointError(f"{path} is a zip archive, not a PyTorch checkpoint (it holds "
                                   f"{shown or 'no files'}, no data.pkl): give a file written by torch.save, "
                                   f"Lightning or safetensors")
        return CheckpointError(f"{what} file {path} is corrupt, torch.load fails ({detail}): use another copy")
    torch_zip = magic == b"PK\x03\x04" and _first_zip_entry(head).endswith(".pkl")
    legacy = head.startswith(_LEGACY_TORCH_HEAD)
    if torch_zip or (legacy and (isinstance(err, EOFError) or "unexpected EOF" in str(err))):
        return CheckpointError(f"{what} file {path} is truncated ({size} bytes, the end of the archive is "
                               f"missing): it was not written or copied completely; use another copy")
    if legacy:
        return CheckpointError(f"{what} file {path} is corrupt, torch.load fails ({detail}): use another copy")
    if magic == b"PK\x03\x04":
        return CheckpointError(f"{path} is a damaged or truncated zip archive (its first entry is "
                               f"{_first_zip_entry(head)!r}), not a PyTorch checkpoint: use another copy, or "
                               f"give a file written by torch.save, Lightning or safetensors")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return CheckpointError(f"{path} is a plain Python pickle (it starts with {magic!r}: pickle.dump, not "
                               f"torch.save), not a PyTorch checkpoint: load it in Python and re-save its tensors "
                               f"with torch.save(state_dict, ...) or safetensors")
    return CheckpointError(f"{path} is not a PyTorch checkpoint (it starts with {magic!r}): give a file written "
                           f"by torch.save, Lightning or safetensors")


def read_checkpoint(path: str | Path, *, what: str = "checkpoint", mmap: bool = False) -> dict:
    """Read a checkpoint or weights file as a dict, safely (``weights_only=True``) and on the CPU.

    ``.safetensors`` files give their tensor dict; everything else goes through ``torch.load`` (Lightning
    ``.ckpt``, ``.pth``, ``.pth.tar``, ``.bin``). ``mmap=True`` maps tensor storage instead of reading it
    (cheap checks of large files).

    Raises:
        CheckpointError: the path is a directory; the file is empty, truncated, not a PyTorch/safetensors
            file, holds Python objects that a weights-only load refuses, or does not hold a dict
            (one line naming the file). A missing file raises :class:`CheckpointNotFoundError` (a
            ``CheckpointError`` and a ``FileNotFoundError``).
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(path.rglob("*.ckpt"))[:1] or sorted(path.rglob("*.pth"))[:1]
        example = f" (e.g. {inside[0]})" if inside else ""
        raise CheckpointError(f"{path} is a directory, not a {what} file: give the file itself{example}")
    if not path.exists():
        raise CheckpointNotFoundError(f"{what} file {path} does not exist: check the path")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} file {path} is empty (0 bytes): it was not written completely; "
                              f"use another copy")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # SafetensorError, OSError
            raise CheckpointError(f"cannot read {what} file {path} ({size} bytes) as safetensors, it is "
                                  f"truncated or not a safetensors file ({_first_line(err)}): use another "
                                  f"copy") from err
    with open(path, "rb") as handle:
        head = handle.read(512)                          # magic bytes and a zip's first entry name
    is_zip = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():
            # a plain pickle.dump file makes torch warn about its protocol before failing; the error names it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except Exception as err:  # unpickling errors come in many types
        raise _load_error(path, what, size, head, is_zip, err) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint (expected a dict: a "
                              f"state dict or a checkpoint with 'state_dict' / 'model')")
    return obj


def state_dict_of(obj: dict, path: str | Path = "the checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a read checkpoint: unwraps ``{"state_dict": ...}``, ``{"model": ...}`` (Segmenter,
    DeiT), Lightning checkpoints, and strips a ``module.`` (DDP) prefix.

    Raises:
        CheckpointError: no tensors found (names the file and its top-level keys).
    """
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        top = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} contains no tensors (top-level keys: {top}): give a weights file or a "
                              f"checkpoint with a 'state_dict'")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors``, ``.pth``/``.pt``/``.bin``/``.ckpt``/``.pth.tar``
    (:func:`read_checkpoint`, then :func:`state_dict_of`).

    Raises:
        CheckpointError: see :func:`read_checkpoint`; or the file holds no tensors.
    """
    return state_dict_of(read_checkpoint(path, what="weights"), path)


# ------------------------------------------------------------------------------------------ loading
@dataclass
class LoadReport:
    """What :func:`load_matching` did: keys absent from the file, keys the model lacks, shape conflicts.

    ``missing`` and ``mismatched`` list every such key, the expected ones included; ``fresh_patterns`` (the
    ``may_reinit`` globs of :func:`load_matching`: parameters that start fresh by design, such as the CBSA
    step sizes a softmax ViT's weights lack) say which are expected (:attr:`fresh`). The other ones are
    :attr:`problems`.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    loaded: int = 0
    fresh_patterns: tuple[str, ...] = ()

    @property
    def fresh(self) -> list[str]:
        """The missing or shape-mismatched keys that match ``fresh_patterns``: new parameters, at their
        initialization as intended."""
        keys = self.missing + [k for k, _, _ in self.mismatched]
        return [k for k in keys if _matches(k, self.fresh_patterns)]

    @property
    def problems(self) -> bool:
        """True when some key is unexpected, or missing or shape-mismatched without being expected fresh."""
        fresh = set(self.fresh)
        return bool(self.unexpected or any(k not in fresh for k in self.missing)
                    or any(k not in fresh for k, _, _ in self.mismatched))

    def summary(self, limit: int = 20) -> str:
        """One line per non-empty category, none when everything matched: the new parameters that start fresh
        as expected (counted per ``fresh_patterns`` glob), then the problems: missing, unexpected and
        shape-mismatched keys, each listing at most ``limit`` keys and saying so when it lists fewer than there
        are."""
        def count(items: list, note: str = "") -> str:
            shown = f", first {limit} shown" if len(items) > limit else ""
            return f"({len(items)}{note}{shown})"

        fresh = self.fresh
        fresh_set = set(fresh)
        missing = [k for k in self.missing if k not in fresh_set]
        mismatched = [m for m in self.mismatched if m[0] not in fresh_set]
        lines = []
        if fresh:
            groups: dict[str, int] = {}
            for key in fresh:
                pattern = next(p for p in self.fresh_patterns if fnmatch.fnmatchcase(key, p))
                groups[pattern] = groups.get(pattern, 0) + 1
            lines.append(f"new parameters, initialized fresh as expected ({len(fresh)}: "
                         + ", ".join(f"{n} {p}" for p, n in groups.items()) + ")")
        if missing:
            lines.append(f"missing keys {count(missing)}: {missing[:limit]}")
        if self.unexpected:
            lines.append(f"unexpected keys {count(self.unexpected)}: {self.unexpected[:limit]}")
        if mismatched:
            lines.append(f"shape-mismatched keys {count(mismatched, ', left at init')}: "
                         + ", ".join(f"{k} file{tuple(a)} vs model{tuple(b)}" for k, a, b in mismatched[:limit]))
        return "\n".join(lines)


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def _examples(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def _layout_hint(mismatched: list[tuple[str, tuple, tuple]]) -> str:
    """A concrete fix for the common attention-layout conflicts (timm qkv vs CBSA shared)."""
    for key, file_shape, model_shape in mismatched:
        if key.endswith("attn.qkv.weight") and len(file_shape) == len(model_shape) == 2:
            if file_shape[0] == 3 * model_shape[0]:
                return ("the file's attention has separate q, k, v (timm's qkv) but the model's CBSA layers use "
                        "variant 'shared': set variant: qkv on CBSAAttention (or use SoftmaxAttention)")
            if 3 * file_shape[0] == model_shape[0]:
                return ("the file's attention has one shared projection (CBSA variant 'shared') but the model's "
                        "layers have q, k, v: set variant: shared on CBSAAttention")
    return ""


def load_matching(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "state dict", *,
                  strict: bool = False, scope: str = "", may_reinit: Sequence[str] = (),
                  opt_out: str = "") -> LoadReport:
    """Load the tensors whose names and shapes match; report the rest.

    Args:
        module: the model to load into.
        state_dict: tensors in ``module``'s key space.
        source: what the tensors come from (the file), for messages.
        strict: within ``scope``, a tensor of the file that the model lacks (unexpected) or that has another
            shape (mismatched), and a tensor of the model absent from the file (missing), is an error unless
            its key matches ``may_reinit`` (glob patterns of documented fresh parameters, e.g. CBSA step
            sizes, a classification head). Nothing is loaded then. Without ``strict`` they are logged at
            WARNING and left at their initialization.
        scope: key prefix the strict check covers (``"encoder."`` for encoder weights in a whole model;
            ``""`` = every key).
        may_reinit: glob patterns of keys that may be missing or shape-mismatched under ``strict``; the report
            names them "new parameters, initialized fresh as expected" instead of missing or mismatched. The
            report is logged at WARNING when something else is off, else at INFO (printed on stderr when no
            logging is set up, as on the command line, where a WARNING shows too).
        opt_out: the setting that turns ``strict`` off, named in the error (e.g. ``pretrained_strict: false``).

    Raises:
        CheckpointError: under ``strict``, one line naming the file, the first few keys of each kind with
            their shapes, and what to do.
    """
    own = module.state_dict()
    report = LoadReport(fresh_patterns=tuple(may_reinit))
    usable = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
    mismatched_keys = {m[0] for m in report.mismatched}
    report.missing = [k for k in own if k not in usable and k not in mismatched_keys]
    report.loaded = len(usable)
    if strict:
        unexpected = [k for k in report.unexpected if k.startswith(scope)]
        mismatched = [m for m in report.mismatched if m[0].startswith(scope) and not _matches(m[0], may_reinit)]
        missing = [k for k in report.missing if k.startswith(scope) and not _matches(k, may_reinit)]
        if unexpected or mismatched or missing:
            def count(n: int, what: str) -> str:
                return f"{n} {what}" + ("s" if n > 1 else "")

            parts = []
            if mismatched:
                parts.append(count(len(mismatched), "shape-mismatched tensor") + " ("
                             + _examples([f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched])
                             + ")")
            if unexpected:
                parts.append(count(len(unexpected), "unexpected tensor") + " ("
                             + _examples([f"{k} {tuple(state_dict[k].shape)}" for k in unexpected]) + ")")
            if missing:
                parts.append(count(len(missing), "tensor") + f" missing from the file ({_examples(missing)})")
            target = type(module).__name__ + (f" {scope.rstrip('.')}" if scope else "")
            hint = _layout_hint(mismatched)
            fix = "; ".join(x for x in (hint, f"set {opt_out} to load the rest anyway (these tensors keep "
                                              f"their initialization)" if opt_out else "") if x)
            raise CheckpointError(f"{source} does not fit the {target}: {', '.join(parts)}"
                                  + (f"; {fix}" if fix else ""))
    module.load_state_dict(usable, strict=False)
    summary = report.summary()
    message = (f"loaded {len(usable)}/{len(own)} tensors from {source} into {type(module).__name__}"
               + (f"\n{summary}" if summary else ""))
    if report.problems:
        log.warning(message)
    elif log.hasHandlers():
        log.info(message)
    else:        # no logging set up (the command line): shown as Python shows a warning then, on stderr
        print(message, file=sys.stderr, flush=True)
    return report
