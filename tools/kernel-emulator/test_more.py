"""gemv.cu, rope.cu, nll.cu, rmsnorm.cu against numpy references. Run: python3 test_more.py"""
import sys, time
import numpy as np
from emu import f2bf, bf2f, Epilogue, EPI_STORE_F32, EPI_STORE_BF16, EPI_ADD_F32, EPI_GATED_BF16, ACT_SILU, ACT_GELU_TANH, NAN16
from emu_more import *

rng = np.random.default_rng(7)
results = []


def report(name, err, tol, extra=""):
    ok = bool(err <= tol)
    results.append((name, ok))
    print(f"{'PASS' if ok else 'FAIL'} {name}: max rel err {err:.3e} (tol {tol:.0e}) {extra}", flush=True)


def bfm(rows, ld, scale=1.0):
    g = f2bf(rng.standard_normal((rows, ld)).astype(np.float32) * scale)
    return g.reshape(-1), bf2f(g).astype(np.float64)


# ------------------------------------------------------------------ gemv
def run_gemv(M, N, K, kind, bias=False, goff=None, act=ACT_SILU, sumsq=True, pad=(8, 16, 3)):
    lda, ldw, ldo = K + pad[0], K + pad[1], N + pad[2]
    gated = kind == EPI_GATED_BF16
    rowsW = (goff + N) if gated else N
    A, Af = bfm(M, lda, 0.5)
    W, Wf = bfm(rowsW, ldw, 0.5)
    Af, Wf = Af[:, :K], Wf[:, :K]
    b = (rng.standard_normal(rowsW) * 0.3).astype(np.float32) if bias else None
    if kind in (EPI_STORE_BF16, EPI_GATED_BF16):
        out = np.full(M * ldo, NAN16, np.uint16)
    elif kind == EPI_ADD_F32:
        out = rng.standard_normal(M * ldo).astype(np.float32)
    else:
        out = np.full(M * ldo, np.nan, np.float32)
    out0 = out.copy()
    ss = np.full(N, np.nan, np.float32) if gated and sumsq else None
    ep = Epilogue(kind, out, ldo, act=act, bias=b, sumsq=ss, gate_offset=goff or 0)
    t = time.time()
    gemv_bf16(A, lda, W, ldw, M, N, K, ep)
    C = Af @ Wf.T
    if not gated:
        ref = C + (b if bias else 0)
        got = (bf2f(out) if kind == EPI_STORE_BF16 else out).reshape(M, ldo)[:, :N].astype(np.float64)
        if kind == EPI_ADD_F32:
            got = got - out0.reshape(M, ldo)[:, :N]
        tol = 1e-2 if kind == EPI_STORE_BF16 else 1e-5
    else:
        gate, up = C[:, :N], C[:, goff:goff + N]
        if bias:
            gate, up = gate + b[:N], up + b[goff:goff + N]
        a = gate / (1 + np.exp(-gate)) if act == ACT_SILU else 0.5 * gate * (1 + np.tanh(0.7978845608 * (gate + 0.044715 * gate ** 3)))
        ref = a * up
        got = bf2f(out).reshape(M, ldo)[:, :N].astype(np.float64)
        tol = 1e-2
    w = ep.writes.reshape(M, ldo)
    wok = (w[:, :N] == 1).all() and (w[:, N:] == 0).all()
    pad_ok = np.array_equal(out.reshape(M, ldo)[:, N:].view(np.uint8), out0.reshape(M, ldo)[:, N:].view(np.uint8))
    err = np.abs(got - ref).max() / np.abs(ref).max()
    report(f"gemv M={M} N={N} K={K} kind={kind} bias={bias} goff={goff} act={act}", err if wok and pad_ok else np.inf, tol,
           f"writes_once={wok} pad_untouched={pad_ok} ({time.time() - t:.1f}s)")
    if gated and sumsq:
        sref = (ref ** 2).sum(0)
        report(f"  gemv sumsq M={M} N={N}", np.abs(ss - sref).max() / np.abs(sref).max(), 1e-5)


# ------------------------------------------------------------------ rope
def run_rope(T, n_heads, n_kv, hd, n_freq, norm, offset=0.0, first=5, eps=1e-6, base=10000.0):
    q_dim, kv_dim = n_heads * hd, n_kv * hd
    qkv, qkvf = bfm(T, q_dim + 2 * kv_dim, 2.0)
    npos = first + T + 3
    inv = base ** (-np.arange(n_freq) / max(n_freq, 1))
    ang = np.arange(npos)[:, None] * inv[None, :]
    cos_t, sin_t = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    qn = (rng.standard_normal(hd) * 0.2 + (0 if offset else 1)).astype(np.float32) if norm else None
    kn = (rng.standard_normal(hd) * 0.2 + (0 if offset else 1)).astype(np.float32) if norm else None
    cap = npos + 2
    q_out = np.full(T * q_dim, NAN16, np.uint16)
    kc = np.full(cap * kv_dim, NAN16, np.uint16)
    vc = np.full(cap * kv_dim, NAN16, np.uint16)
    kc0, vc0 = kc.copy(), vc.copy()
    writes = {'q': np.zeros(q_out.size, int), 'k': np.zeros(kc.size, int), 'v': np.zeros(vc.size, int)}
    t0 = time.time()
    qkv_rope(qkv, T, n_heads, n_kv, hd, n_freq, cos_t.reshape(-1), sin_t.reshape(-1), qn, kn, offset, eps, first,
             q_out, kc, vc, writes)
    # reference (independent formulation): x -> rmsnorm(x) * (offset + w) -> rotate_half RoPE on dims [0, 2 n_freq)
    def proc(x, w, pos):
        if w is not None:
            x = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * (offset + w.astype(np.float64))
        y = x.copy()
        c, s = np.cos(pos * inv).astype(np.float32).astype(np.float64), np.sin(pos * inv).astype(np.float32).astype(np.float64)
        x1, x2 = x[..., :n_freq], x[..., n_freq:2 * n_freq]
        y[..., :n_freq] = x1 * c - x2 * s
        y[..., n_freq:2 * n_freq] = x2 * c + x1 * s
        return y
    errs = []
    for t in range(T):
        pos = first + t
        row = qkvf[t]
        qh = row[:q_dim].reshape(n_heads, hd)
        kh = row[q_dim:q_dim + kv_dim].reshape(n_kv, hd)
        vh = row[q_dim + kv_dim:].reshape(n_kv, hd)
        rq, rk = proc(qh, qn, pos), proc(kh, kn, pos)
        gq = bf2f(q_out[t * q_dim:(t + 1) * q_dim]).reshape(n_heads, hd)
        gk = bf2f(kc[pos * kv_dim:(pos + 1) * kv_dim]).reshape(n_kv, hd)
        gv = bf2f(vc[pos * kv_dim:(pos + 1) * kv_dim]).reshape(n_kv, hd)
        errs += [np.abs(gq - rq).max() / np.abs(rq).max(), np.abs(gk - rk).max() / np.abs(rk).max(),
                 0 if np.array_equal(gv, vh) else np.inf]
    rows = np.arange(first, first + T)
    kw, vw = writes['k'].reshape(cap, kv_dim), writes['v'].reshape(cap, kv_dim)
    others = np.setdiff1d(np.arange(cap), rows)
    wok = ((writes['q'] == 1).all() and (kw[rows] == 1).all() and (vw[rows] == 1).all() and (kw[others] == 0).all()
           and (vw[others] == 0).all() and np.array_equal(kc.reshape(cap, -1)[others], kc0.reshape(cap, -1)[others]))
    report(f"qkv_rope T={T} heads={n_heads}/{n_kv} hd={hd} n_freq={n_freq} norm={norm} offset={offset} first={first}",
           max(errs) if wok else np.inf, 1e-2, f"writes_ok={wok} ({time.time() - t0:.1f}s)")


# ------------------------------------------------------------------ nll
def run_nll(rows, vocab, cap, scale=3.0, special=None):
    L = (rng.standard_normal((rows, vocab)) * scale).astype(np.float32)
    if special == 'big':
        L += 80.0  # exp would overflow without the max shift
    if special == 'neginf':
        L[:, ::7] = -np.inf
    tg = rng.integers(0, vocab, rows).astype(np.uint32)
    if special == 'neginf':
        tg = (tg // 7) * 7 + 1
        tg = np.minimum(tg, vocab - 1)
        tg[tg % 7 == 0] = 1
    nll = np.full(rows, np.nan, np.float32)
    row_nll(L.reshape(-1), tg, rows, vocab, cap, nll)
    Lc = np.tanh(L.astype(np.float64) / cap) * cap if cap > 0 else L.astype(np.float64)
    mx = Lc.max(1, keepdims=True)
    ref = (mx[:, 0] + np.log(np.exp(Lc - mx).sum(1))) - Lc[np.arange(rows), tg]
    err = np.abs(nll - ref).max() / max(np.abs(ref).max(), 1)
    report(f"row_nll rows={rows} vocab={vocab} cap={cap} special={special}", err, 1e-5, f"nan={np.isnan(nll).sum()}")


# ------------------------------------------------------------------ rmsnorm
def run_rms(T, d, offset, eps=1e-6):
    x = (rng.standard_normal(T * d) * 3).astype(np.float32)
    w = (rng.standard_normal(d) * 0.3 + (0 if offset else 1)).astype(np.float32)
    out = np.full(T * d, NAN16, np.uint16)
    wr = np.zeros(T * d, int)
    rmsnorm_bf16(x, w, T, d, offset, eps, out, wr)
    X = x.reshape(T, d).astype(np.float64)
    ref = X / np.sqrt((X ** 2).mean(1, keepdims=True) + eps) * (offset + w)
    err = np.abs(bf2f(out).reshape(T, d) - ref).max() / np.abs(ref).max()
    report(f"rmsnorm_bf16 T={T} d={d} offset={offset}", err if (wr == 1).all() else np.inf, 1e-2)
    br = (rng.standard_normal(T * d)).astype(np.float32)
    x0 = x.copy()
    wr[:] = 0
    add_rmsnorm(x, br, w, T, d, offset, eps, wr)
    B = br.reshape(T, d).astype(np.float64)
    ref = X + B / np.sqrt((B ** 2).mean(1, keepdims=True) + eps) * (offset + w)
    err = np.abs(x.reshape(T, d) - ref).max() / np.abs(ref).max()
    report(f"add_rmsnorm T={T} d={d} offset={offset}", err if (wr == 1).all() else np.inf, 1e-5)


if __name__ == "__main__":
    what = sys.argv[1:] or ['gemv', 'rope', 'nll', 'rms']
    if 'gemv' in what:
        for M in (1, 2, 3, 4):
            run_gemv(M, 37, 264, EPI_STORE_F32)
        run_gemv(4, 20, 8, EPI_STORE_F32)
        run_gemv(2, 9, 520, EPI_STORE_BF16, bias=True)
        run_gemv(3, 17, 1000, EPI_ADD_F32, bias=True)
        run_gemv(1, 16, 256, EPI_ADD_F32, pad=(0, 0, 0))
        for M in (1, 2, 3, 4):
            run_gemv(M, 21, 264, EPI_GATED_BF16, goff=24)
        run_gemv(4, 13, 136, EPI_GATED_BF16, goff=13, bias=True, act=ACT_GELU_TANH)
        run_gemv(2, 9, 520, EPI_GATED_BF16, goff=40, bias=True)
        run_gemv(3, 9, 72, EPI_GATED_BF16, goff=16, sumsq=False)
    if 'rope' in what:
        run_rope(3, 4, 2, 64, 32, False)
        run_rope(2, 4, 2, 128, 64, True, offset=0.0, first=0)
        run_rope(2, 4, 1, 256, 128, True, offset=1.0)                # Gemma-style (1 + w)
        run_rope(2, 3, 1, 128, 16, True)                              # partial rotary (2 * 16 of 128 dims)
        run_rope(1, 2, 1, 80, 20, False, first=17)                    # head_dim not a multiple of 32, partial
        run_rope(2, 32, 8, 64, 32, True, first=9)                     # 48 heads > 32 warps: warps loop
        run_rope(1, 2, 2, 96, 0, True)                                # no rotation
        run_rope(1, 2, 1, 40, 17, True)                               # odd n_freq, lanes beyond head_dim
    if 'nll' in what:
        for cap in (0.0, 30.0):
            run_nll(3, 1000, cap)
            run_nll(2, 100, cap)      # fewer elements than threads: empty threads and warps
            run_nll(2, 512, cap)
            run_nll(2, 5000, cap, special='big')
            run_nll(1, 1, cap)
        run_nll(2, 3001, 0.0, scale=20.0)
        run_nll(2, 3001, 0.0, special='neginf')
        run_nll(2, 3001, 30.0, special='neginf')
    if 'rms' in what:
        run_rms(2, 1024, 0.0)
        run_rms(3, 2052, 1.0)
        run_rms(2, 100, 0.0)         # fewer float4 than threads
        run_rms(1, 4, 1.0)
        run_rms(1, 3840, 1.0)
    print("ALL PASS" if all(ok for _, ok in results) else "SOME FAILED: " + ", ".join(n for n, ok in results if not ok))
