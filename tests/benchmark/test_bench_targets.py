import json

from cbsa_dense.benchmark.targets import check_targets
from cbsa_dense.cli import main as cli_main


def _layer(impl, tokens, ms, mem=10.0, **extra):
    return {"impl": impl, "tokens": tokens, "fwd_bwd_ms": ms, "fwd_bwd_ms_min": ms * 0.9, "peak_mem_mb": mem,
            "dtype": "float32", **extra}


ATTENTION = [_layer("cbsa", 4096, 10.0, 50.0), _layer("softmax", 4096, 100.0), _layer("linear", 4096, 9.0),
             _layer("cbsa_reference", 4096, 20.0, max_abs_diff=2e-6),
             _layer("cbsa", 16384, 50.0, 240.0), _layer("softmax", 16384, 1000.0)]
ENCODER = [{"attention": "cbsa", "image_size": 1024, "fwd_bwd_ms": 100.0, "dtype": "float32"},
           {"attention": "softmax", "image_size": 1024, "fwd_bwd_ms": 300.0, "dtype": "float32"}]


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


def test_targets_command_reads_out_dir_json_and_sets_exit_code(tmp_path, capsys):
    (tmp_path / "attention.json").write_text(json.dumps({"machine": {}, "records": ATTENTION}))
    (tmp_path / "encoder.json").write_text(json.dumps(ENCODER))
    assert cli_main(["benchmark", "targets", "--attention", str(tmp_path / "attention.json"),
                     "--encoder", str(tmp_path / "encoder.json"), "--json"]) == 1
    assert len(json.loads(capsys.readouterr().out)) == 8
    assert cli_main(["benchmark", "targets", "--encoder", str(tmp_path / "encoder.json")]) == 0
