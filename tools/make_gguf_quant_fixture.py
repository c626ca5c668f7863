#!/usr/bin/env python3
"""Writes tests/fixtures/gguf/quant_blocks.json: a few random blocks per GGML type with the f32 values
gguf-py's reference `gguf.quants.dequantize` gives for them.

Usage: python tools/make_gguf_quant_fixture.py [OUT.json]   (needs numpy and gguf-py)
"""
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize

# Byte offsets of the f16 scale fields inside one block: random bytes there could be NaN/inf.
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
QUANT_BLOCKS = {T.Q4_0: 4, T.Q4_1: 4, T.Q5_0: 4, T.Q5_1: 4, T.Q8_0: 4, T.Q4_K: 2, T.Q5_K: 2, T.Q6_K: 2}
N_FLOATS = 64


def random_blocks(rng, qtype, n_blocks):
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scale = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        raw[:, off : off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1), n_blocks * block


def float_data(rng, qtype):
    x = (rng.standard_normal(N_FLOATS) * 3).astype(np.float32)
    x[:4] = [0.0, -0.0, 1.0, -65504.0]
    if qtype == T.F32:
        return x.view(np.uint8)
    if qtype == T.F16:
        return x.astype(np.float16).view(np.uint8)
    # BF16: upper halves of the f32 bit patterns.
    return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tests/fixtures/gguf/quant_blocks.json")
    rng = np.random.default_rng(20240607)
    cases = []
    for qtype in [T.F32, T.F16, T.BF16]:
        raw = float_data(rng, qtype)
        values = dequantize(raw, qtype).astype(np.float32).reshape(-1)
        cases.append((qtype, raw, N_FLOATS, values))
    for qtype, n_blocks in QUANT_BLOCKS.items():
        raw, n = random_blocks(rng, qtype, n_blocks)
        values = dequantize(raw, qtype).astype(np.float32).reshape(-1)
        assert values.size == n and np.all(np.isfinite(values))
        cases.append((qtype, raw, n, values))
    doc = {
        "generator": "tools/make_gguf_quant_fixture.py (expected values from gguf.quants.dequantize)",
        "cases": [
            {
                "type": q.name,
                "type_id": int(q),
                "n_elements": n,
                "hex": raw.tobytes().hex(),
                # f32 bit patterns: exact and immune to float formatting.
                "expected_bits": [int(b) for b in v.view(np.uint32)],
            }
            for q, raw, n, v in cases
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
