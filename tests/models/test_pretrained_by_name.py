"""``ViTEncoder(pretrained=...)`` as users give it: a local file, a timm name with a pretrained tag,
``hf-hub:org/repo``, offline. Nothing downloads: timm's hub download (``timm.models._hub.hf_hub_download``, the
one function through which timm reaches the Hugging Face hub) is replaced by one that serves a hub repo folder
written here by timm's own ``save_for_hf`` from a tiny ``vit_small_patch14_dinov2``, or the real hub code runs
with ``HF_HUB_OFFLINE`` on a cache laid out here."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf

from cbsa_dense.errors import CheckpointError, ConfigError
from cbsa_dense.layers import CBSAAttention
from cbsa_dense.models.encoders import ViTEncoder
from tests.conftest import cli_user_error
from tests.test_bad_images import make_dataset

#: huggingface_hub comes with timm (it is no direct dependency of this project, so no import statement).
HUB_ERRORS = pytest.importorskip("huggingface_hub.errors")
#: the hub's settings, read when a download starts (HF_HUB_CACHE, HF_HUB_OFFLINE)
HUB = "huggingface_hub.constants."

NAME = "vit_small_patch14_dinov2.lvd142m"
REPO = "timm/vit_small_patch14_dinov2.lvd142m"           # where timm's pretrained config puts NAME's weights
TINY = {"img_size": 28, "depth": 1, "embed_dim": 32, "num_heads": 2}   # 2x2 patches of 14 px, 1 block


def _timm_repo(folder: Path) -> torch.nn.Module:
    """A hub repo folder as timm publishes one (``config.json`` + ``model.safetensors``) of a tiny DINOv2 ViT."""
    torch.manual_seed(1)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, **TINY).eval()
    with torch.no_grad():
        for block in model.blocks:                # LayerScale off its 1e-5 init: a loaded value is unmistakable
            block.ls1.gamma.uniform_(0.5, 1.5)
    save_for_hf(model, str(folder), safe_serialization=True)
    return model


def _encoder(pretrained: str, **kwargs) -> ViTEncoder:
    return ViTEncoder(arch="vit_small_patch14_dinov2", **TINY, pretrained=pretrained,
                      attn_layer=lambda d, h: CBSAAttention(d, h, variant="qkv", grid=(2, 2)), **kwargs)


def _assert_loaded(encoder: ViTEncoder, model: torch.nn.Module) -> None:
    for name in ("blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.0.ls1.gamma", "pos_embed",
                 "cls_token", "patch_embed.proj.weight", "norm.weight"):
        torch.testing.assert_close(encoder.state_dict()[name], model.state_dict()[name], msg=name)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """timm's hub download serving ``tmp_path/repo`` as :data:`REPO`; the requests are recorded."""
    model = _timm_repo(tmp_path / "repo")
    calls = []

    def hf_hub_download(repo_id, filename, *args, revision=None, cache_dir=None, **kwargs):
        calls.append((repo_id, filename))
        path = tmp_path / "repo" / filename
        if repo_id != REPO or not path.exists():
            raise HUB_ERRORS.EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    monkeypatch.setattr("timm.models._hub.hf_hub_download", hf_hub_download)
    return model, calls


@pytest.mark.parametrize("name", [NAME, "vit_small_patch14_dinov2", f"hf-hub:{REPO}"])
def test_timm_name_loads_through_timm_hub_machinery(hub, name):
    model, calls = hub
    encoder = _encoder(name)
    _assert_loaded(encoder, model)
    assert encoder.pretrained_from == name
    assert all(repo == REPO for repo, _ in calls) and ("model.safetensors" in [f for _, f in calls])
    assert ("config.json" in [f for _, f in calls]) == name.startswith("hf-hub:")   # the repo's own config


def test_weights_in_the_offline_hub_cache_load(tmp_path, monkeypatch):
    """The real hub code, offline, on a cache laid out as a download on a connected machine leaves it."""
    model = _timm_repo(tmp_path / "repo")
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
    (entry / "snapshots" / commit).mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    (tmp_path / "repo" / "model.safetensors").rename(entry / "snapshots" / commit / "model.safetensors")
    monkeypatch.setattr(HUB + "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(HUB + "HF_HUB_OFFLINE", True)
    _assert_loaded(_encoder(NAME), model)


def test_local_file_loads(tmp_path):
    model = _timm_repo(tmp_path / "repo")
    _assert_loaded(_encoder(str(tmp_path / "repo" / "model.safetensors")), model)
    torch.save(model.state_dict(), tmp_path / "vit.bin")
    _assert_loaded(_encoder(str(tmp_path / "vit.bin")), model)


@pytest.mark.parametrize("name, hint", [
    ("vit_smal_patch14_dinov2.lvd142m", "did you mean vit_small_patch14_dinov2.lvd142m"),
    ("vit_small_patch14_dinov2.lvd142", "timm's pretrained tags for vit_small_patch14_dinov2: lvd142m"),
    ("vit_small_patch16_18x2_224", "timm has no pretrained weights for vit_small_patch16_18x2_224"),
    ("timm/vit_small_patch14_dinov2.lvd142m", "a hub repo is written hf-hub:timm/vit_small_patch14_dinov2.lvd142m"),
])
def test_unknown_name_is_one_line(name, hint, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("an unknown name must not reach the hub")

    monkeypatch.setattr("timm.models._hub.hf_hub_download", no_download)
    with pytest.raises(ConfigError) as info:
        _encoder(name)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"pretrained={name!r} is neither an existing file nor a timm model name with "
                              "pretrained weights")
    assert hint in message and "hf-hub:org/repo" in message


@pytest.mark.parametrize("offline", [False, True])
def test_failed_download_is_one_line(offline, tmp_path, monkeypatch):
    def hf_hub_download(repo_id, filename, *args, **kwargs):
        raise HUB_ERRORS.LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub and "
                                                 "we cannot find the requested files in the local cache.\nPlease "
                                                 "check your connection.")

    monkeypatch.setattr("timm.models._hub.hf_hub_download", hf_hub_download)
    monkeypatch.setattr(HUB + "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(HUB + "HF_HUB_OFFLINE", offline)
    with pytest.raises(CheckpointError) as info:
        _encoder(NAME)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"pretrained={NAME!r}: its weights ({REPO}) are not in the local cache "
                              f"{tmp_path / 'hub'} and ")
    assert f"python -c \"import timm; timm.create_model('{NAME}', pretrained=True)\"" in message
    assert "HF_HUB_OFFLINE=1" in message and "give a local .safetensors/.pth/.bin file" in message
    if offline:
        assert "HF_HUB_OFFLINE=1 is set, so no download was tried" in message
    else:
        assert "the download failed (LocalEntryNotFoundError: An error happened" in message
        assert "HF_HUB_OFFLINE=1 skips the network" in message


def test_empty_offline_cache_is_one_line(tmp_path, monkeypatch):
    """The real hub code, offline, with nothing cached (hf-hub: asks for the repo's config.json first)."""
    monkeypatch.setattr(HUB + "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(HUB + "HF_HUB_OFFLINE", True)
    for name in (NAME, f"hf-hub:{REPO}"):
        with pytest.raises(CheckpointError, match=rf"^pretrained={name!r}: its weights \({REPO}\) are not in the "
                                                  r"local cache .* HF_HUB_OFFLINE=1 is set, so no download was "
                                                  r"tried; on a machine with network run"):
            _encoder(name)


def _project_checkpoint(path: Path) -> Path:
    """A checkpoint as ``cbsa-dense fit`` writes one (Lightning layout, the task's class path)."""
    encoder = ViTEncoder(**TINY, patch_size=14)
    torch.save({"epoch": 0, "global_step": 2, "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"model.encoder.{k}": v for k, v in encoder.state_dict().items()},
                "hyper_parameters": {"_class_path": "cbsa_dense.tasks.segmentation.SegmentationTask",
                                     "num_classes": 3}}, path)
    return path


def test_project_checkpoint_as_pretrained_points_to_weights(tmp_path):
    path = _project_checkpoint(tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError) as info:
        _encoder(str(path))
    message = str(info.value)
    assert "\n" not in message and "pretrained_strict" not in message
    assert message.startswith(f"{path} is a cbsa-dense checkpoint (SegmentationTask), not encoder weights: "
                              f"load it with --model.init_args.weights {path} ")


ENC = "--model.init_args.encoder.init_args."
TWIN = ["fit", "--config", "finetune_cpu.yaml", f"{ENC}img_size", "28", f"{ENC}embed_dim", "32", f"{ENC}depth",
        "1", f"{ENC}num_heads", "2", f"{ENC}attn_layer.init_args.grid", "[2, 2]"]


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path / "my_data", size=(30, 44))
    data = ["--data.init_args.root", str(root), "--trainer.default_root_dir", str(tmp_path)]
    path = _project_checkpoint(tmp_path / "last.ckpt")
    line = cli_user_error([*TWIN, *data, f"{ENC}pretrained", str(path)], capsys)
    assert f"is a cbsa-dense checkpoint (SegmentationTask), not encoder weights: load it with " \
           f"--model.init_args.weights {path}" in line
    line = cli_user_error([*TWIN, *data, f"{ENC}pretrained", "vit_small_patch14_dinov2.lvd14m"], capsys)
    assert "pretrained='vit_small_patch14_dinov2.lvd14m' is neither an existing file nor a timm model name" in line
    monkeypatch.setattr(HUB + "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(HUB + "HF_HUB_OFFLINE", True)
    line = cli_user_error([*TWIN, *data, f"{ENC}pretrained", NAME], capsys)
    assert f"pretrained={NAME!r}: its weights ({REPO}) are not in the local cache" in line


def test_hub_repo_that_does_not_exist_is_one_line(monkeypatch):
    def hf_hub_download(repo_id, filename, *args, **kwargs):
        cls = HUB_ERRORS.RepositoryNotFoundError        # built without the HTTP response the hub attaches
        error = cls.__new__(cls)
        OSError.__init__(error, f"404 Client Error. Repository Not Found for url: https://huggingface.co/{repo_id}")
        raise error

    monkeypatch.setattr("timm.models._hub.hf_hub_download", hf_hub_download)
    with pytest.raises(ConfigError, match=r"^pretrained='hf-hub:nobody/vit_none': the Hugging Face hub has no repo "
                                          r"nobody/vit_none or refuses it \(RepositoryNotFoundError\); check the "
                                          r"name, log in \(hf auth login\) for a gated repo, or give a local "
                                          r"\.safetensors/\.pth/\.bin file$"):
        _encoder("hf-hub:nobody/vit_none")
