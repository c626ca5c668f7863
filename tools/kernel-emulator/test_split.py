"""Split-KV attention (attention_body with split_tiles > 0 + attention_combine), run as the launcher
`attention` in kernels.rs would (plan from attention_split with sm_count = 132). Run: python3 test_split.py [quick]"""
import sys, time
import numpy as np
import test_emu
from test_emu import bf_matrix, report, results
from emu import *

rng = test_emu.rng


def ref_attention(qf, kf, vf, T, S, HD, n_heads, group, scale, window):
    ref = np.zeros((T, n_heads * HD))
    for h in range(n_heads):
        kh = h // group
        Q = qf[:, h * HD:(h + 1) * HD]
        Kh = kf[:, kh * HD:(kh + 1) * HD]
        Vh = vf[:, kh * HD:(kh + 1) * HD]
        sc = Q @ Kh.T * np.float32(scale)
        qpos = S - T + np.arange(T)[:, None]
        kpos = np.arange(S)[None, :]
        vis = kpos <= qpos
        if window > 0:
            vis &= qpos - kpos < window
        sc = np.where(vis, sc, -np.inf)
        p = np.exp(sc - sc.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        ref[:, h * HD:(h + 1) * HD] = p @ Vh
    return ref


def run(HD, T, S, n_heads, group, window, split=True, expect_split=True, scale=None):
    n_kv = n_heads // group
    scale = scale if scale is not None else 1.0 / np.sqrt(HD)
    ldq, ldkv = n_heads * HD, n_kv * HD
    q, qf = bf_matrix(T, ldq, ldq)
    k, kf = bf_matrix(S, ldkv, ldkv)
    v, vf = bf_matrix(S, ldkv, ldkv)
    out = np.full(T * ldq, NAN16, np.uint16)
    info = {}
    t = time.time()
    writes = attention(HD, q, ldq, k, v, ldkv, out, ldq, T, S, n_heads, group, np.float32(scale), window,
                       split=split, info=info)
    got = bf2f(out).reshape(T, ldq).astype(np.float64)
    ref = ref_attention(qf, kf, vf, T, S, HD, n_heads, group, scale, window)
    writes_ok = (writes == 1).all()
    plan_ok = (info['splits'] >= 2) == expect_split
    empty = ""
    if 'part' in info:
        pm = info['part'].reshape(info['splits'], T, n_heads, HD + 2)[..., HD]
        n_empty = int(np.isneginf(pm).sum())
        empty = f" empty(split,row,head)={n_empty}/{pm.size}"
    err = np.abs(got - ref).max() / np.abs(ref).max()
    report(f"attention{' split' if split else ''} HD={HD} T={T} S={S} heads={n_heads} group={group} window={window}",
           err if writes_ok and plan_ok and np.isfinite(got).all() else np.inf, 2e-2,
           f"plan=(split_tiles={info['split_tiles']}, splits={info['splits']}){empty} writes_once={writes_ok} ({time.time() - t:.1f}s)")
    return info


if __name__ == "__main__":
    quick = "quick" in sys.argv
    # decode shapes T=1/3, S=130/150/200, GQA 1/2/4, with and without windows
    for T in (1, 3):
        for S in (130, 150, 200):
            for group in (1, 2, 4):
                run(64, T, S, 4, group, 0)
            run(128, T, S, 4, 2, 0)
            run(64, T, S, 4, 2, 50)
            run(64, T, S, 8, 4, 100)
    # windows that leave whole splits with no visible key for some rows
    run(64, 1, 600, 2, 2, 64)      # key_begin 536, tile_first 512: split 0 sees 536..575
    run(64, 3, 193, 2, 1, 64)      # key_begin 127: split 0 (keys 64..127) empty for queries 1, 2
    run(64, 3, 193, 2, 1, 65)
    run(64, 3, 577, 4, 2, 1)       # window 1: each query only sees itself; keys 574..576 straddle tiles
    run(64, 3, 600, 4, 2, 1, expect_split=False)  # one tile in range -> wanted < 2 -> no split
    run(64, 1, 600, 2, 2, 600)     # window == S
    run(64, 3, 600, 2, 2, 1000)    # window > S
    # T = 64, S = 300 (one full query tile, split), and windows there
    run(64, 64, 300, 2, 1, 0)
    run(64, 64, 300, 4, 2, 0)
    run(128, 64, 300, 2, 2, 100)
    run(64, 17, 300, 2, 2, 0)
    # splits with more than one tile each (many heads -> fewer splits)
    run(64, 1, 2048, 2, 2, 0)
    run(64, 3, 2048, 32, 4, 0)     # wanted=9 -> split_tiles 4, splits 8
    run(64, 1, 2048, 32, 4, 700)
    run(64, 1, 1000, 16, 2, 0)     # uneven last split
    if not quick:
        run(128, 3, 2048, 4, 1, 0)
        run(256, 1, 200, 2, 2, 0)
        run(256, 3, 300, 2, 1, 130)
    # non-split path: T > 64, or wanted < 2 (one tile), still passes
    run(64, 65, 300, 2, 1, 0, expect_split=False)
    run(64, 1, 60, 2, 1, 0, expect_split=False)
    run(64, 1, 600, 2, 1, 0, split=False, expect_split=False)
    run(64, 3, 193, 2, 1, 64, split=False, expect_split=False)
    print("ALL PASS" if all(ok for _, ok in results) else "SOME FAILED: " + ", ".join(n for n, ok in results if not ok))
