"""Compares the emulated kernels with numpy references. Run: python3 test_emu.py [quick]"""
import sys
import time
import numpy as np
from emu import *

rng = np.random.default_rng(1)
results = []


def report(name, err, tol, extra=""):
    ok = err <= tol
    results.append((name, ok))
    print(f"{'PASS' if ok else 'FAIL'} {name}: max rel err {err:.3e} (tol {tol:.0e}) {extra}", flush=True)


def bf_matrix(rows, cols, ld, scale=1.0):
    """global bf16 array of shape [rows, ld] (only first cols used), plus the float view of the used part."""
    g = f2bf(rng.standard_normal((rows, ld)).astype(np.float32) * scale)
    return g.reshape(-1), bf2f(g)[:, :cols].astype(np.float64)


# ------------------------------------------------------------------ primitive self-tests
def test_primitives():
    # ldmatrix + mma on a single 16x16 @ 16x8 tile, loaded the canonical way
    smem = Smem(2 * 16 * 24 + 2 * 8 * 24)
    Af = rbf(rng.standard_normal((16, 16)).astype(np.float32))
    Bnk = rbf(rng.standard_normal((8, 16)).astype(np.float32))  # B^T stored n-major (k contiguous)
    smem.a[:16 * 24] = f2bf(np.pad(Af, ((0, 0), (0, 8)))).reshape(-1)
    smem.a[16 * 24:16 * 24 + 8 * 24] = f2bf(np.pad(Bnk, ((0, 0), (0, 8)))).reshape(-1)
    lane = LANE
    a = ldmatrix_x4(smem, (lane & 15) * 24 + (lane >> 4) * 8)
    b = ldmatrix_x4(smem, 16 * 24 + (lane & 7) * 24 + ((lane >> 3) & 1) * 8)  # matrices 2,3 repeat 0,1
    c = np.zeros((32, 4), np.float32)
    mma_16816(c, a, b[:, 0], b[:, 1])
    D = np.zeros((16, 8), np.float32)
    D[C_ROW, C_COL] = c
    ref = Af.astype(np.float64) @ Bnk.T.astype(np.float64)
    report("primitive ldmatrix+mma (A row, B from n-major rows)", np.abs(D - ref).max() / np.abs(ref).max(), 1e-6)
    # .trans: B stored k-major ([k][n], n contiguous)
    smem2 = Smem(2 * 16 * 16)
    Bkn = Bnk.T.copy()
    smem2.a[:] = f2bf(np.pad(Bkn, ((0, 0), (0, 8)))).reshape(-1)
    c2 = np.zeros((32, 4), np.float32)
    bt = ldmatrix_x4(smem2, (lane & 15) * 16, trans=True)  # matrices: k 0-7, k 8-15 (then repeated)
    mma_16816(c2, a, bt[:, 0], bt[:, 1])
    D2 = np.zeros((16, 8), np.float32)
    D2[C_ROW, C_COL] = c2
    report("primitive ldmatrix.trans+mma (B k-major)", np.abs(D2 - ref).max() / np.abs(ref).max(), 1e-6)


# ------------------------------------------------------------------ GEMM
def ref_gemm(Af, Wf):
    return Af @ Wf.T


def run_gemm(BN, M, N, K, kind, bias=False, pad=(8, 16, 3)):
    lda, ldw, ldo = K + pad[0], K + pad[1], N + pad[2]
    A, Af = bf_matrix(M, K, lda)
    W, Wf = bf_matrix(N, K, ldw)
    Wf = Wf * 1.0
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    if kind == EPI_STORE_BF16:
        out = np.zeros(M * ldo, np.uint16)
    else:
        out = rng.standard_normal(M * ldo).astype(np.float32) if kind == EPI_ADD_F32 else np.zeros(M * ldo, np.float32)
    out0 = out.copy()
    ep = Epilogue(kind, out, ldo, bias=b)
    t = time.time()
    gemm(BN, A, lda, W, ldw, M, N, K, ep)
    ref = ref_gemm(Af, Wf) + (b.astype(np.float64) if bias else 0)
    got_full = (bf2f(out) if kind == EPI_STORE_BF16 else out).reshape(M, ldo).astype(np.float64)
    got = got_full[:, :N]
    if kind == EPI_ADD_F32:
        got = got - out0.reshape(M, ldo)[:, :N]
        ref = ref  # out += acc + bias
    w = ep.writes.reshape(M, ldo)
    writes_ok = (w[:, :N] == 1).all() and (w[:, N:] == 0).all()
    untouched_ok = np.array_equal(out.reshape(M, ldo)[:, N:], out0.reshape(M, ldo)[:, N:])
    tol = 1e-2 if kind == EPI_STORE_BF16 else 1e-5
    err = np.abs(got - ref).max() / np.abs(ref).max()
    report(f"gemm BN={BN} M={M} N={N} K={K} kind={kind} bias={bias}", err if writes_ok and untouched_ok else np.inf, tol,
           f"writes_once={writes_ok} pad_untouched={untouched_ok} ({time.time() - t:.1f}s)")


def run_gated(BN, M, NEUR, goff, K, act=ACT_SILU, bias=False, with_sumsq=True):
    rowsW = goff + NEUR
    lda, ldw, ldo = K + 8, K, NEUR + 5
    A, Af = bf_matrix(M, K, lda, 0.5)
    W, Wf = bf_matrix(rowsW, K, ldw, 0.5)
    b = rng.standard_normal(rowsW).astype(np.float32) * 0.3 if bias else None
    out = np.zeros(M * ldo, np.uint16)
    rows, ss_ld = 2 * ((M + 127) // 128), NEUR + 3
    sumsq = np.full(rows * ss_ld, np.nan, np.float32) if with_sumsq else None
    ep = Epilogue(EPI_GATED_BF16, out, ldo, act=act, bias=b, sumsq=sumsq, gate_offset=goff, sumsq_ld=ss_ld)
    t = time.time()
    gemm(BN, A, lda, W, ldw, M, NEUR, K, ep)
    C = Af @ Wf.T
    gate, up = C[:, :NEUR], C[:, goff:goff + NEUR]
    if bias:
        gate = gate + b[:NEUR]
        up = up + b[goff:goff + NEUR]
    if act == ACT_SILU:
        a = gate / (1 + np.exp(-gate))
    else:
        a = 0.5 * gate * (1 + np.tanh(0.7978845608 * (gate + 0.044715 * gate ** 3)))
    ref = a * up
    got = bf2f(out).reshape(M, ldo)[:, :NEUR]
    w = ep.writes.reshape(M, ldo)
    writes_ok = (w[:, :NEUR] == 1).all() and (w[:, NEUR:] == 0).all()
    err = np.abs(got - ref).max() / np.abs(ref).max()
    report(f"gated BN={BN} M={M} neurons={NEUR} gate_offset={goff} K={K} act={act} bias={bias}",
           err if writes_ok else np.inf, 1e-2, f"writes_once={writes_ok} ({time.time() - t:.1f}s)")
    if with_sumsq:
        ss_ref = (ref ** 2).sum(0)
        part = sumsq.reshape(rows, ss_ld)
        pad_ok = np.isnan(part[:, NEUR:]).all()
        got_ss = part[:, :NEUR].astype(np.float64).sum(0)  # accumulate_sqrt's fixed-order reduction
        err = np.abs(got_ss - ss_ref).max() / np.abs(ss_ref).max()
        report(f"  sumsq BN={BN} neurons={NEUR}", err if pad_ok else np.inf, 1e-5, f"pad_untouched={pad_ok}")


# ------------------------------------------------------------------ attention
def run_attention(HD, T, S, n_heads, group, window, scale=None):
    n_kv = n_heads // group
    scale = scale if scale is not None else 1.0 / np.sqrt(HD)
    ldq, ldkv = n_heads * HD, n_kv * HD
    q, qf = bf_matrix(T, ldq, ldq)
    k, kf = bf_matrix(S, ldkv, ldkv)
    v, vf = bf_matrix(S, ldkv, ldkv)
    ldo = ldq
    out = np.full(T * ldo, NAN16, np.uint16)
    t = time.time()
    writes = attention(HD, q, ldq, k, v, ldkv, out, ldo, T, S, n_heads, group, np.float32(scale), window)
    got = bf2f(out).reshape(T, ldo).astype(np.float64)
    ref = np.zeros((T, ldo))
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
    writes_ok = (writes == 1).all()
    err = np.abs(got - ref).max() / np.abs(ref).max()
    report(f"attention HD={HD} T={T} S={S} heads={n_heads} group={group} window={window}",
           err if writes_ok else np.inf, 2e-2, f"writes_once={writes_ok} ({time.time() - t:.1f}s)")


if __name__ == "__main__":
    quick = "quick" in sys.argv
    test_primitives()
    # (b) GEMM non-gated
    run_gemm(128, 77, 200, 136, EPI_STORE_F32)
    run_gemm(128, 77, 200, 136, EPI_STORE_BF16, bias=True)
    run_gemm(128, 77, 200, 136, EPI_ADD_F32, bias=True)
    run_gemm(256, 130, 260, 64, EPI_STORE_F32)
    run_gemm(256, 130, 260, 64, EPI_ADD_F32, bias=True)
    run_gemm(256, 77, 200, 136, EPI_STORE_BF16)
    run_gemm(128, 130, 260, 64, EPI_STORE_F32)
    # (c) attention
    run_attention(64, 100, 100, 2, 1, 0)
    run_attention(64, 130, 130, 4, 2, 0)
    run_attention(128, 70, 70, 2, 2, 0)
    run_attention(64, 20, 150, 2, 2, 0)        # decode-like T < S
    run_attention(128, 1, 90, 2, 1, 0)         # single query
    run_attention(64, 150, 150, 2, 1, 40)      # sliding window
    run_attention(64, 37, 200, 4, 2, 50)       # window + T < S + GQA
    if not quick:
        run_attention(256, 70, 100, 2, 2, 0)
        run_attention(128, 140, 200, 2, 2, 70)
    # (d) gated + sumsq
    run_gated(128, 77, 100, 104, 136)
    run_gated(128, 77, 100, 104, 136, act=ACT_GELU_TANH, bias=True)
    run_gated(256, 130, 100, 104, 64, bias=True)
    run_gated(256, 77, 150, 152, 40)
    print("ALL PASS" if all(ok for _, ok in results) else "SOME FAILED: " + ", ".join(n for n, ok in results if not ok))
