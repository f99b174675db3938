import json

import pytest

from cbsa_dense.benchmark.targets import check_targets
from cbsa_dense.cli import main as cli_main


def _layer(impl, tokens, ms, mem=10.0, **extra):
    return {"impl": impl, "tokens": tokens, "fwd_bwd_ms": ms, "fwd_bwd_ms_min": ms * 0.9, "peak_mem_mb": mem,
            "dtype": "float32", **extra}


def _encoder(attention, ms, dtype="float32"):
    return {"attention": attention, "image_size": 1024, "fwd_bwd_ms": ms, "dtype": dtype}


ATTENTION = [_layer("cbsa", 4096, 10.0, 50.0), _layer("softmax", 4096, 100.0), _layer("linear", 4096, 9.0),
             _layer("cbsa_reference", 4096, 20.0, max_abs_diff=2e-6),
             _layer("cbsa", 16384, 50.0, 240.0), _layer("softmax", 16384, 1000.0)]
ENCODER = [_encoder("cbsa", 100.0), _encoder("softmax", 300.0)]


def test_targets_are_ratios_of_the_records():
    rows = {r["target"]: r for r in check_targets(ATTENTION, ENCODER)}
    assert rows["softmax / cbsa layer fwd+bwd, 4096 tokens"]["value"] == 10.0
    assert rows["softmax / cbsa layer fwd+bwd, 16384 tokens"]["ok"] is False           # 20 < 30
    assert rows["cbsa layer time 16384 / 4096 tokens"]["value"] == 5.0
    assert rows["cbsa layer time 16384 / 4096 tokens"]["ok"] is False                  # 5 > 4.5
    assert rows["cbsa layer peak memory 16384 / 4096 tokens"]["value"] == 4.8
    assert rows["linear / cbsa layer fwd+bwd, 4096 tokens"]["ok"] is False             # CBSA slower
    assert rows["authors-style reference / cbsa layer fwd+bwd, 4096 tokens"]["value"] == 2.0
    assert rows["max abs difference cbsa vs reference, 4096 tokens"]["ok"] is True
    assert rows["softmax / cbsa ViT-S encoder fwd+bwd, 1024^2"]["value"] == 3.0
    assert len(rows) == 8


def _records(target: str, value: float) -> tuple[list[dict], list[dict]]:
    """The fewest records that give ``target`` the measured ``value`` (a time or memory ratio, or a difference)."""
    cbsa = _layer("cbsa", 4096, 10.0, 10.0)
    return {
        "softmax / cbsa layer fwd+bwd, 4096 tokens": ([cbsa, _layer("softmax", 4096, 10.0 * value)], []),
        "softmax / cbsa layer fwd+bwd, 16384 tokens": ([_layer("cbsa", 16384, 10.0),
                                                        _layer("softmax", 16384, 10.0 * value)], []),
        "cbsa layer time 16384 / 4096 tokens": ([cbsa, _layer("cbsa", 16384, 10.0 * value, 10.0)], []),
        "cbsa layer peak memory 16384 / 4096 tokens": ([cbsa, _layer("cbsa", 16384, 10.0, 10.0 * value)], []),
        "linear / cbsa layer fwd+bwd, 4096 tokens": ([cbsa, _layer("linear", 4096, 10.0 * value)], []),
        "authors-style reference / cbsa layer fwd+bwd, 4096 tokens": (
            [cbsa, _layer("cbsa_reference", 4096, 10.0 * value)], []),
        "max abs difference cbsa vs reference, 4096 tokens": (
            [cbsa, _layer("cbsa_reference", 4096, 20.0, max_abs_diff=value)], []),
        "softmax / cbsa ViT-S encoder fwd+bwd, 1024^2": ([], [_encoder("cbsa", 10.0),
                                                              _encoder("softmax", 10.0 * value)]),
    }[target]


@pytest.mark.parametrize("target, passing, on_bound, failing", [
    ("softmax / cbsa layer fwd+bwd, 4096 tokens", 8.5, 8.0, 7.5),                 # at least 8x faster
    ("softmax / cbsa layer fwd+bwd, 16384 tokens", 31.0, 30.0, 29.0),             # at least 30x faster
    ("cbsa layer time 16384 / 4096 tokens", 4.0, 4.5, 5.0),                       # at most 4.5x the time
    ("cbsa layer peak memory 16384 / 4096 tokens", 4.0, 4.5, 5.0),                # at most 4.5x the memory
    ("linear / cbsa layer fwd+bwd, 4096 tokens", 1.1, 1.0, 0.9),                  # not slower than linear
    ("authors-style reference / cbsa layer fwd+bwd, 4096 tokens", 1.4, 1.3, 1.2), # 1.3x the reference
    ("max abs difference cbsa vs reference, 4096 tokens", 5e-6, 1e-5, 2e-5),     # same outputs
    ("softmax / cbsa ViT-S encoder fwd+bwd, 1024^2", 2.6, 2.5, 2.4),              # 2.5x the encoder
])
def test_each_target_passes_above_its_bound_and_fails_below(target, passing, on_bound, failing):
    for value, ok in ((passing, True), (on_bound, True), (failing, False)):
        rows = {r["target"]: r for r in check_targets(*_records(target, value))}
        assert rows[target]["value"] == pytest.approx(value) and rows[target]["ok"] is ok, (value, rows[target])


def test_the_median_decides_and_the_minima_are_beside_it():
    """softmax 100 ms (fastest run 60) vs CBSA 10 ms (fastest 10): the medians give 10x (target met), the minima 6x."""
    softmax = {**_layer("softmax", 4096, 100.0), "fwd_bwd_ms_min": 60.0}
    cbsa = {**_layer("cbsa", 4096, 10.0), "fwd_bwd_ms_min": 10.0}
    (row,) = check_targets([softmax, cbsa])
    assert (row["value"], row["value_min"], row["ok"]) == (10.0, 6.0, True)


def test_only_records_of_the_checked_dtype_count():
    """bfloat16 records are left out of a float32 check (no row without a float32 pair) and checked alone."""
    encoder = [_encoder("cbsa", 100.0, "bfloat16"), _encoder("softmax", 200.0, "bfloat16")]
    assert check_targets(encoder=encoder) == []
    (row,) = check_targets(encoder=encoder, dtype="bfloat16")
    assert (row["value"], row["ok"]) == (2.0, False)


def test_targets_command_reads_out_dir_json_and_sets_exit_code(tmp_path, capsys):
    (tmp_path / "attention.json").write_text(json.dumps({"machine": {}, "records": ATTENTION}))
    (tmp_path / "encoder.json").write_text(json.dumps(ENCODER))
    assert cli_main(["benchmark", "targets", "--attention", str(tmp_path / "attention.json"),
                     "--encoder", str(tmp_path / "encoder.json"), "--json"]) == 1
    assert len(json.loads(capsys.readouterr().out)) == 8
    assert cli_main(["benchmark", "targets", "--encoder", str(tmp_path / "encoder.json")]) == 0
