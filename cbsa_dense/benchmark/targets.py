"""The performance targets of issue 6, checked on benchmark records measured in one run.

Each target is a ratio of two measurements of the same run and dtype (float32 unless told): the
median-based value decides ``ok``; the ratio of the minima is given beside it (on a shared machine the
minima are the least disturbed runs).
"""

from __future__ import annotations

from collections.abc import Sequence


def _find(records: Sequence[dict], dtype: str, **match) -> dict | None:
    for r in records:
        if r.get("dtype", "float32") == dtype and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _ratio(num: dict | None, den: dict | None, key: str) -> float | None:
    if num is None or den is None or not num.get(key) or not den.get(key):
        return None
    return round(num[key] / den[key], 2)


def check_targets(attention: Sequence[dict] = (), encoder: Sequence[dict] = (),
                  dtype: str = "float32") -> list[dict]:
    """Rows ``{"target", "value", "value_min", "bound", "ok"}`` for every target the records allow."""
    rows = []

    def add(name: str, num: dict | None, den: dict | None, key: str, bound: float, at_least: bool) -> None:
        value = _ratio(num, den, key)
        if value is None:
            return
        min_key = f"{key}_min" if key.endswith("_ms") else key
        rows.append({"target": name, "value": value, "value_min": _ratio(num, den, min_key),
                     "bound": (">= " if at_least else "<= ") + str(bound),
                     "ok": value >= bound if at_least else value <= bound})

    def layer(impl: str, tokens: int) -> dict | None:
        return _find(attention, dtype, impl=impl, tokens=tokens)

    add("softmax / cbsa layer fwd+bwd, 4096 tokens", layer("softmax", 4096), layer("cbsa", 4096),
        "fwd_bwd_ms", 8, True)
    add("softmax / cbsa layer fwd+bwd, 16384 tokens", layer("softmax", 16384), layer("cbsa", 16384),
        "fwd_bwd_ms", 30, True)
    add("cbsa layer time 16384 / 4096 tokens", layer("cbsa", 16384), layer("cbsa", 4096), "fwd_bwd_ms", 4.5, False)
    add("cbsa layer peak memory 16384 / 4096 tokens", layer("cbsa", 16384), layer("cbsa", 4096),
        "peak_mem_mb", 4.5, False)
    add("linear / cbsa layer fwd+bwd, 4096 tokens", layer("linear", 4096), layer("cbsa", 4096),
        "fwd_bwd_ms", 1.0, True)
    for tokens in sorted({r["tokens"] for r in attention if r["impl"] == "cbsa_reference"}):
        add(f"authors-style reference / cbsa layer fwd+bwd, {tokens} tokens", layer("cbsa_reference", tokens),
            layer("cbsa", tokens), "fwd_bwd_ms", 1.3, True)
        ref = layer("cbsa_reference", tokens)
        if ref is not None and ref.get("max_abs_diff") is not None:
            rows.append({"target": f"max abs difference cbsa vs reference, {tokens} tokens", "value": ref["max_abs_diff"],
                         "value_min": None, "bound": "<= 1e-05", "ok": ref["max_abs_diff"] <= 1e-5})
    add("softmax / cbsa ViT-S encoder fwd+bwd, 1024^2", _find(encoder, dtype, attention="softmax", image_size=1024),
        _find(encoder, dtype, attention="cbsa", image_size=1024), "fwd_bwd_ms", 2.5, True)
    return rows
