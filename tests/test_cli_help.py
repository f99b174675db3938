"""The task help a user reads: the project's classes by short name, no list of every torch module."""

import contextlib
import io

import pytest

from cbsa_dense.cli import main


def _help(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code in (0, None)
    return out.getvalue()


@pytest.mark.parametrize("task", ["SegmentationTask", "DetectionTask"])
def test_task_help_is_short_and_lists_only_the_project_parts(task):
    text = _help("fit", "--model.help", task)
    assert len(text.splitlines()) < 200, len(text.splitlines())          # was 542 lines of torch classes
    flat = " ".join(text.split())
    assert "torch.nn.modules" not in flat
    assert "known subclasses: cbsa_dense.models.encoders.Encoder, cbsa_dense.models.encoders.TokenEncoder" in flat
    assert "--model.encoder" in text and "--model.head" in text


def test_encoder_and_head_help_by_short_name():
    assert "--encoder.arch" in _help("fit", "--model", "SegmentationTask", "--model.encoder.help",
                                                     "ViTEncoder")
    assert "n_layers" in _help("fit", "--model", "SegmentationTask", "--model.head.help", "CBTDecoder")
