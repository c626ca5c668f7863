"""Warp-level numpy emulator of the PTX primitives used by kernels/{gemm.cu,attention.cu},
and line-by-line transliterations of gemm_body<BN> and attention_body<HD>.

Semantics: see SEMANTICS.md (PTX ISA 9.7.x: mma.m16n8k16 .bf16 fragments, ldmatrix .m8n8 .x4 [.trans]).
Registers are real uint32 bit patterns (bf16 pairs packed low|high<<16), shared memory is a uint16 array
addressed in bf16 elements, cp.async is a deferred copy whose destination is poisoned with NaN from
issue until its group is waited on (so reading too early, or overwriting a buffer still in use, shows up
as NaN).
"""
import numpy as np

LANE = np.arange(32)
NAN16 = np.uint16(0x7FC0)


# ---------------------------------------------------------------- bf16
def f2bf(x):
    """float32 -> bf16 bits, round to nearest even (like __float2bfloat16 / cvt.rn.bf16.f32)."""
    x = np.asarray(x, np.float32)
    b = x.view(np.uint32).astype(np.uint64)
    r = ((b >> 16) & 1) + 0x7FFF
    out = ((b + r) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), NAN16, out).astype(np.uint16)


def bf2f(b):
    return (np.asarray(b, np.uint16).astype(np.uint32) << 16).view(np.float32)


def rbf(x):
    return bf2f(f2bf(x))


def pack_bf16(lo, hi):  # __floats2bfloat162_rn(lo, hi): lo -> low 16 bits (.x), hi -> high 16 bits (.y)
    return f2bf(lo).astype(np.uint32) | (f2bf(hi).astype(np.uint32) << 16)


def lo16(r):
    return (r & 0xFFFF).astype(np.uint16)


def hi16(r):
    return (r >> 16).astype(np.uint16)


# ---------------------------------------------------------------- warp primitives
def shfl_xor(v, m):
    return v[LANE ^ m]


class Smem:
    def __init__(self, nbytes):
        assert nbytes % 2 == 0
        self.a = np.full(nbytes // 2, NAN16, np.uint16)  # uninitialised shared memory reads as NaN

    def row8(self, addr):
        addr = int(addr)
        assert addr % 8 == 0, f"ldmatrix/cp.async address {addr} not 16-byte aligned"
        assert 0 <= addr and addr + 8 <= self.a.size, f"shared address {addr} out of range"
        return self.a[addr:addr + 8]


def ldmatrix_x4(smem, addr, trans=False):
    """addr: (32,) bf16-element addresses. Returns (32,4) uint32.
    Matrix q's row r comes from lane 8q+r. Non-trans: lane l reg q = M_q[l/4][2(l%4)], M_q[l/4][2(l%4)+1]
    (low, high). Trans: lane l reg q = M_q[2(l%4)][l/4], M_q[2(l%4)+1][l/4]."""
    assert addr.shape == (32,)
    mats = np.stack([np.stack([smem.row8(addr[8 * q + r]) for r in range(8)]) for q in range(4)])  # [q][row][col]
    out = np.zeros((32, 4), np.uint32)
    g, t = LANE >> 2, LANE & 3
    for q in range(4):
        M = mats[q]
        if not trans:
            lo, hi = M[g, 2 * t], M[g, 2 * t + 1]
        else:
            lo, hi = M[2 * t, g], M[2 * t + 1, g]
        out[:, q] = lo.astype(np.uint32) | (hi.astype(np.uint32) << 16)
    return out


# fragment maps for mma.m16n8k16 (.bf16 A row / B col, f32 C/D)
_g, _t = LANE >> 2, LANE & 3
A_ROW = np.stack([_g + 8 * ((i % 4) >= 2) for i in range(8)], 1)      # a_i, i=0..7
A_COL = np.stack([2 * _t + (i & 1) + 8 * (i >= 4) for i in range(8)], 1)
B_ROW = np.stack([2 * _t + (i & 1) + 8 * (i >= 2) for i in range(4)], 1)  # k index
B_COL = np.stack([_g for i in range(4)], 1)                              # n index
C_ROW = np.stack([_g + 8 * (i >= 2) for i in range(4)], 1)
C_COL = np.stack([2 * _t + (i & 1) for i in range(4)], 1)
for R, Cc, shape in ((A_ROW, A_COL, (16, 16)), (B_ROW, B_COL, (16, 8)), (C_ROW, C_COL, (16, 8))):
    cnt = np.zeros(shape, int)
    np.add.at(cnt, (R, Cc), 1)
    assert (cnt == 1).all()  # each fragment layout is a bijection


def _unpack(regs):  # (32, n) uint32 -> (32, 2n) float32, element 2r = low half of reg r, 2r+1 = high half
    out = np.empty((32, 2 * regs.shape[1]), np.float32)
    out[:, 0::2] = bf2f(lo16(regs))
    out[:, 1::2] = bf2f(hi16(regs))
    return out


def mma_16816(c, a, b0, b1):
    """c: (32,4) f32 (updated in place), a: (32,4) uint32, b0,b1: (32,) uint32."""
    A = np.zeros((16, 16), np.float32)
    A[A_ROW, A_COL] = _unpack(a)
    B = np.zeros((16, 8), np.float32)
    B[B_ROW, B_COL] = _unpack(np.stack([b0, b1], 1))
    C = np.zeros((16, 8), np.float32)
    C[C_ROW, C_COL] = c
    D = (A.astype(np.float64) @ B.astype(np.float64) + C).astype(np.float32)
    c[:] = D[C_ROW, C_COL]


class CpAsync:
    """cp.async.cg 16 bytes, groups, wait_group. Block-wide (every thread commits/waits uniformly)."""

    def __init__(self, smem):
        self.smem, self.cur, self.groups = smem, [], []

    def cp16(self, sdst, gsrc, goff, src_bytes):
        assert sdst % 8 == 0 and goff % 8 == 0, "cp.async 16B alignment"
        assert src_bytes in (0, 16)
        if src_bytes:
            assert 0 <= goff and goff + 8 <= gsrc.size, f"global read out of bounds at {goff}"
            data = gsrc[goff:goff + 8].copy()
        else:
            data = np.zeros(8, np.uint16)
        self.smem.row8(sdst)[:] = NAN16  # in flight: contents undefined until waited on
        self.cur.append((sdst, data))

    def commit(self):
        self.groups.append(self.cur)
        self.cur = []

    def wait(self, n):
        while len(self.groups) > n:
            for sdst, data in self.groups.pop(0):
                self.smem.row8(sdst)[:] = data


# ---------------------------------------------------------------- epilogue (common.cuh)
EPI_STORE_F32, EPI_STORE_BF16, EPI_ADD_F32, EPI_GATED_BF16 = 0, 1, 2, 3
ACT_SILU, ACT_GELU_TANH = 0, 1


class Epilogue:
    def __init__(self, kind, out, ldo, act=0, bias=None, sumsq=None, gate_offset=0, sumsq_ld=0):
        self.kind, self.act, self.bias, self.out, self.ldo = kind, act, bias, out, ldo
        self.sumsq, self.gate_offset, self.sumsq_ld = sumsq, gate_offset, sumsq_ld
        self.writes = np.zeros(out.size, np.int32)  # emulator bookkeeping: stores per output element


def activation(act, g):
    g = np.float32(g) if np.isscalar(g) else g.astype(np.float32)
    if act == ACT_SILU:
        return (g / (np.float32(1) + np.exp(-g))).astype(np.float32)
    k = np.float32(0.7978845608)
    return (np.float32(0.5) * g * (np.float32(1) + np.tanh(k * (g + np.float32(0.044715) * g * g * g)))).astype(np.float32)


def epilogue_store(e, m, n, v):  # vectorised over the lanes that pass the guard (distinct (m, n))
    v = v.astype(np.float32)
    if e.bias is not None:
        v = v + e.bias[n]
    i = m.astype(np.int64) * e.ldo + n
    assert len(np.unique(i)) == len(i)
    e.writes[i] += 1
    if e.kind == EPI_STORE_F32:
        e.out[i] = v
    elif e.kind == EPI_STORE_BF16:
        e.out[i] = f2bf(v)
    else:
        e.out[i] += v


def epilogue_gated(e, m, n, gate, up):
    gate, up = gate.astype(np.float32), up.astype(np.float32)
    if e.bias is not None:
        gate = gate + e.bias[n]
        up = up + e.bias[e.gate_offset + n]
    v = (activation(e.act, gate) * up).astype(np.float32)
    i = m.astype(np.int64) * e.ldo + n
    assert len(np.unique(i)) == len(i)
    e.writes[i] += 1
    e.out[i] = f2bf(v)
    return v


# ---------------------------------------------------------------- gemm.cu
class Tile:
    def __init__(self, BN):
        self.BN, self.BM, self.BK, self.STAGES, self.THREADS = BN, 128, 32, 3, 256
        self.WT = BN // 4
        self.NT = self.WT // 8
        self.LDS = self.BK + 8
        self.SMEM_BYTES = self.STAGES * (self.BM + BN) * self.LDS * 2


def gemm_block(BN, bx, by, A, lda, W, ldw, M, N, K, ep):
    """One block (blockIdx = (bx, by)) of gemm_body<BN>; A, W are flat uint16 (bf16) global arrays."""
    T = Tile(BN)
    smem = Smem(T.SMEM_BYTES)
    cp = CpAsync(smem)
    As = 0
    Bs = As + T.STAGES * T.BM * T.LDS

    gated = ep.kind == EPI_GATED_BF16
    m0 = by * T.BM
    n0 = bx * (BN // 2 if gated else BN)

    def w_row(r):
        if not gated:
            return n0 + r if n0 + r < N else -1
        within = r % T.WT
        neuron = n0 + (r // T.WT) * (T.WT // 2) + within % (T.WT // 2)
        if neuron >= N:
            return -1
        return neuron if within < T.WT // 2 else ep.gate_offset + neuron

    def load_tile(stage, k0):
        as_ = As + stage * T.BM * T.LDS
        bs = Bs + stage * BN * T.LDS
        for tid in range(T.THREADS):
            for c in range(tid, T.BM * 4, T.THREADS):
                row, col = c >> 2, (c & 3) * 8
                k = k0 + col
                ok = m0 + row < M and k < K
                cp.cp16(as_ + row * T.LDS + col, A, (m0 + row) * lda + k if ok else 0, 16 if ok else 0)
            for c in range(tid, BN * 4, T.THREADS):
                row, col = c >> 2, (c & 3) * 8
                k = k0 + col
                wr = w_row(row)
                ok = wr >= 0 and k < K
                cp.cp16(bs + row * T.LDS + col, W, wr * ldw + k if ok else 0, 16 if ok else 0)

    warps = range(T.THREADS // 32)
    acc = {w: np.zeros((4, T.NT, 32, 4), np.float32) for w in warps}
    lane = LANE

    def wm_wn(w):
        return w >> 2, w & 3

    k_tiles = (K + T.BK - 1) // T.BK
    for s in range(T.STAGES - 1):
        if s < k_tiles:
            load_tile(s, s * T.BK)
        cp.commit()
    for kt in range(k_tiles):
        cp.wait(T.STAGES - 2)
        # __syncthreads()
        nxt = kt + T.STAGES - 1
        if nxt < k_tiles:
            load_tile(nxt % T.STAGES, nxt * T.BK)
        cp.commit()
        as_ = As + (kt % T.STAGES) * T.BM * T.LDS
        bs = Bs + (kt % T.STAGES) * BN * T.LDS
        for w in warps:
            wm, wn = wm_wn(w)
            a_row, a_col = wm * 64 + (lane & 15), (lane >> 4) * 8
            b_row, b_col = wn * T.WT + (lane >> 4) * 8 + (lane & 7), ((lane >> 3) & 1) * 8
            for kk in range(0, T.BK, 16):
                a = [ldmatrix_x4(smem, as_ + (a_row + i * 16) * T.LDS + kk + a_col) for i in range(4)]
                for jj in range(T.NT // 2):
                    b = ldmatrix_x4(smem, bs + (b_row + jj * 16) * T.LDS + kk + b_col)
                    for i in range(4):
                        mma_16816(acc[w][i, 2 * jj], a[i], b[:, 0], b[:, 1])
                        mma_16816(acc[w][i, 2 * jj + 1], a[i], b[:, 2], b[:, 3])
        # (loop-top __syncthreads of the next iteration)
    cp.wait(0)

    g, t = lane >> 2, lane & 3
    for w in warps:
        wm, wn = wm_wn(w)
        row_base = m0 + wm * 64 + g
        if not gated:
            for i in range(4):
                for j in range(T.NT):
                    for e in range(4):
                        m = row_base + i * 16 + (e >> 1) * 8
                        n = n0 + wn * T.WT + j * 8 + 2 * t + (e & 1)
                        ok = (m < M) & (n < N)
                        epilogue_store(ep, m[ok], n[ok], acc[w][i, j, :, e][ok])
            continue
        HJ = T.NT // 2
        for j in range(HJ):
            sq = [np.zeros(32, np.float32), np.zeros(32, np.float32)]
            neuron0 = n0 + wn * (T.WT // 2) + j * 8 + 2 * t
            for i in range(4):
                for e in range(4):
                    m = row_base + i * 16 + (e >> 1) * 8
                    neuron = neuron0 + (e & 1)
                    ok = (m < M) & (neuron < N)
                    v = epilogue_gated(ep, m[ok], neuron[ok], acc[w][i, j, :, e][ok], acc[w][i, j + HJ, :, e][ok])
                    sq[e & 1][ok] += v * v
            for e in range(2):
                s = sq[e].copy()
                s = s + shfl_xor(s, 4)
                s = s + shfl_xor(s, 8)
                s = s + shfl_xor(s, 16)
                ok = (g == 0) & (neuron0 + e < N)
                if ep.sumsq is not None:  # one plain store per (64-row slab, neuron)
                    idx = (by * 2 + wm) * ep.sumsq_ld + (neuron0 + e)[ok]
                    assert np.isnan(ep.sumsq[idx]).all(), "a partial sum written twice"
                    ep.sumsq[idx] = s[ok]


def gemm(BN, A, lda, W, ldw, M, N, K, ep):
    gated = ep.kind == EPI_GATED_BF16
    cols = BN // 2 if gated else BN  # launcher in src/backend/cuda/kernels.rs
    for by in range((M + 127) // 128):
        for bx in range((N + cols - 1) // cols):
            gemm_block(BN, bx, by, A, lda, W, ldw, M, N, K, ep)


# ---------------------------------------------------------------- attention.cu
QT = KT = 64


def attention_block(HD, bx, by, q, ldq, k, v, ldkv, out, ldo, T, S, group, scale, window, writes,
                    split_tiles=0, part=None, bz=0, gridDim_y=None, part_writes=None):
    LDH = HD + 8
    TILE = 64 * LDH
    BYTES = 5 * TILE * 2
    smem = Smem(BYTES)
    cp = CpAsync(smem)
    Qs = 0
    Ks = Qs + TILE
    Vs = Ks + 2 * TILE
    blockDim = 128
    scale = np.float32(scale)

    def load_rows(dst, src, ld, col0, r0, limit):
        CHUNKS = HD // 8
        for tid in range(blockDim):
            for c in range(tid, 64 * CHUNKS, blockDim):
                r, col = c // CHUNKS, (c % CHUNKS) * 8
                ok = r0 + r < limit
                cp.cp16(dst + r * LDH + col, src, (r0 + r) * ld + col0 + col if ok else 0, 16 if ok else 0)

    t0, head = bx * QT, by
    kv_head = head // group
    first_pos = S - T
    last_q = min(t0 + QT, T) - 1
    key_end = first_pos + last_q + 1
    key_begin = max(0, first_pos + t0 - window + 1) if window > 0 else 0
    tile_first = (key_begin // KT) * KT
    all_tiles = (key_end - tile_first + KT - 1) // KT  # C integer division; numerator > 0 here
    it_begin = bz * split_tiles if split_tiles > 0 else 0
    it_end = min(all_tiles, it_begin + split_tiles) if split_tiles > 0 else all_tiles

    load_rows(Qs, q, ldq, head * HD, t0, T)
    if it_begin < it_end:
        load_rows(Ks, k, ldkv, kv_head * HD, tile_first + it_begin * KT, S)
        load_rows(Vs, v, ldkv, kv_head * HD, tile_first + it_begin * KT, S)
    cp.commit()

    lane = LANE
    g, t = lane >> 2, lane & 3
    warps = range(4)
    o = {w: np.zeros((HD // 8, 32, 4), np.float32) for w in warps}
    row_max = {w: np.full((2, 32), -np.inf, np.float32) for w in warps}
    row_sum = {w: np.zeros((2, 32), np.float32) for w in warps}
    q_row = {w: t0 + w * 16 + g for w in warps}

    for it in range(it_begin, it_end):
        j0 = tile_first + it * KT
        buf = (it - it_begin) & 1
        Kb = Ks + buf * TILE
        Vb = Vs + buf * TILE
        if it + 1 < it_end:  # prefetch the next tile into the other buffer
            load_rows(Ks + (buf ^ 1) * TILE, k, ldkv, kv_head * HD, j0 + KT, S)
            load_rows(Vs + (buf ^ 1) * TILE, v, ldkv, kv_head * HD, j0 + KT, S)
        cp.commit()
        cp.wait(1)
        # __syncthreads()
        for warp in warps:
            s = np.zeros((KT // 8, 32, 4), np.float32)
            for kc in range(HD // 16):
                a = ldmatrix_x4(smem, Qs + (warp * 16 + (lane & 15)) * LDH + kc * 16 + (lane >> 4) * 8)
                for jj in range(KT // 16):
                    b = ldmatrix_x4(smem, Kb + (jj * 16 + (lane >> 4) * 8 + (lane & 7)) * LDH + kc * 16 + ((lane >> 3) & 1) * 8)
                    mma_16816(s[2 * jj], a, b[:, 0], b[:, 1])
                    mma_16816(s[2 * jj + 1], a, b[:, 2], b[:, 3])
            for h in range(2):
                row = q_row[warp] + 8 * h
                qpos = first_pos + row
                mx = np.full(32, -np.inf, np.float32)
                for j in range(KT // 8):
                    for e in range(2 * h, 2 * h + 2):
                        kpos = j0 + j * 8 + 2 * t + (e & 1)
                        visible = (row < T) & (kpos < S) & (kpos <= qpos) & ((window <= 0) | (qpos - kpos < window))
                        s[j, :, e] = np.where(visible, s[j, :, e] * scale, -np.inf).astype(np.float32)
                        mx = np.fmax(mx, s[j, :, e])
                mx = np.fmax(mx, shfl_xor(mx, 1))
                mx = np.fmax(mx, shfl_xor(mx, 2))
                m_new = np.fmax(row_max[warp][h], mx)
                empty = m_new == -np.inf
                with np.errstate(invalid="ignore"):
                    alpha = np.where(empty, np.float32(1), np.exp(row_max[warp][h] - m_new)).astype(np.float32)
                ssum = np.zeros(32, np.float32)
                for j in range(KT // 8):
                    for e in range(2 * h, 2 * h + 2):
                        with np.errstate(invalid="ignore"):
                            s[j, :, e] = np.where(empty, np.float32(0), np.exp(s[j, :, e] - m_new)).astype(np.float32)
                        ssum += s[j, :, e]
                ssum = ssum + shfl_xor(ssum, 1)
                ssum = ssum + shfl_xor(ssum, 2)
                row_sum[warp][h] = row_sum[warp][h] * alpha + ssum
                row_max[warp][h] = m_new
                for d in range(HD // 8):
                    o[warp][d, :, 2 * h] *= alpha
                    o[warp][d, :, 2 * h + 1] *= alpha
            for kc in range(KT // 16):
                a = np.stack([pack_bf16(s[2 * kc][:, 0], s[2 * kc][:, 1]), pack_bf16(s[2 * kc][:, 2], s[2 * kc][:, 3]),
                              pack_bf16(s[2 * kc + 1][:, 0], s[2 * kc + 1][:, 1]),
                              pack_bf16(s[2 * kc + 1][:, 2], s[2 * kc + 1][:, 3])], 1)
                for dp in range(HD // 16):
                    b = ldmatrix_x4(smem, Vb + (kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDH + dp * 16 + (lane >> 4) * 8,
                                    trans=True)
                    mma_16816(o[warp][2 * dp], a, b[:, 0], b[:, 1])
                    mma_16816(o[warp][2 * dp + 1], a, b[:, 2], b[:, 3])
        # __syncthreads()
    cp.wait(0)

    if split_tiles > 0:  # partial result: unnormalised O, running max and sum per row
        for warp in warps:
            for h in range(2):
                row = q_row[warp] + 8 * h
                ok = row < T  # `continue` for rows >= T (per lane)
                dst = ((np.int64(bz) * T + row.astype(np.int64)) * gridDim_y + head) * (HD + 2)
                for d in range(HD // 8):
                    for e in range(2):
                        off = (dst + d * 8 + 2 * t + e)[ok]
                        part[off] = o[warp][d, ok, 2 * h + e]
                        part_writes[off] += 1
                okt = ok & (t == 0)
                part[dst[okt] + HD] = row_max[warp][h][okt]
                part[dst[okt] + HD + 1] = row_sum[warp][h][okt]
                part_writes[dst[okt] + HD] += 1
                part_writes[dst[okt] + HD + 1] += 1
        return

    for warp in warps:
        for h in range(2):
            row = q_row[warp] + 8 * h
            ok = row < T
            with np.errstate(divide="ignore"):
                inv = np.where(row_sum[warp][h] > 0, np.float32(1) / row_sum[warp][h], np.float32(0)).astype(np.float32)
            dst = row.astype(np.int64) * ldo + head * HD + 2 * t  # __nv_bfloat162* (element offset, must be even)
            for d in range(HD // 8):
                p = pack_bf16(o[warp][d, :, 2 * h] * inv, o[warp][d, :, 2 * h + 1] * inv)
                off = dst + 2 * (d * 4)  # dst[d * 4] in bfloat162 units
                assert (off[ok] % 2 == 0).all()
                out[off[ok]] = lo16(p[ok])
                out[off[ok] + 1] = hi16(p[ok])
                writes[off[ok]] += 1
                writes[off[ok] + 1] += 1


def attention_combine(part, splits, T, hd, out, ldo, heads, writes):
    """attention_combine, grid (T, heads), block hd threads (vectorised over d = threadIdx.x)."""
    d = np.arange(hd)  # blockDim.x = head_dim, so `d >= hd` never returns
    for row in range(T):
        for head in range(heads):
            at = lambda s: (((s * T + row) * heads + head) * (hd + 2))
            mx = np.float32(-np.inf)
            for s in range(splits):
                mx = np.fmax(mx, part[at(s) + hd])
            sum_ = np.float32(0)
            acc = np.zeros(hd, np.float32)
            if mx != -np.inf:
                for s in range(splits):
                    w = np.float32(np.exp(np.float32(part[at(s) + hd] - mx)))  # 0 for splits that saw no key
                    sum_ = np.float32(sum_ + np.float32(part[at(s) + hd + 1] * w))
                    acc = (acc + part[at(s) + d] * w).astype(np.float32)
            val = (acc / sum_).astype(np.float32) if sum_ > 0 else np.zeros(hd, np.float32)
            i = row * ldo + head * hd + d
            out[i] = f2bf(val)
            writes[i] += 1


def attention_split(T, S, n_heads, HD, window, sm_count=132, scratch_len=None):
    """attention_split in src/backend/cuda/kernels.rs (scratch assumed large enough unless scratch_len given)."""
    if T > 64:
        return None
    key_begin = max(0, (S - T + 1) - window) if window > 0 else 0  # saturating_sub
    n_tiles = -(-(S - key_begin // 64 * 64) // 64)
    wanted = min(-(-(2 * sm_count) // n_heads), n_tiles)
    if wanted < 2:
        return None
    split_tiles = -(-n_tiles // wanted)
    splits = -(-n_tiles // split_tiles)
    fits = scratch_len is None or splits * min(T, 64) * n_heads * (HD + 2) <= scratch_len
    return (split_tiles, splits) if splits >= 2 and fits else None


def attention(HD, q, ldq, k, v, ldkv, out, ldo, T, S, n_heads, group, scale, window, split=False, info=None):
    """The launcher `attention` in kernels.rs: split=True plays the scratch-given case (plan from attention_split)."""
    writes = np.zeros(out.size, np.int32)
    plan = attention_split(T, S, n_heads, HD, window) if split else None
    split_tiles, splits = plan if plan else (0, 1)
    part = part_writes = None
    if split_tiles:
        plen = splits * min(T, 64) * n_heads * (HD + 2)  # attention_partial_len
        part = np.full(plen, np.nan, np.float32)  # scratch contents are garbage before the kernel
        part_writes = np.zeros(plen, np.int32)
    if info is not None:
        info.update(split_tiles=split_tiles, splits=splits)
    for bz in range(splits):
        for by in range(n_heads):
            for bx in range((T + 63) // 64):
                attention_block(HD, bx, by, q, ldq, k, v, ldkv, out, ldo, T, S, group, scale, window, writes,
                                split_tiles, part, bz, n_heads, part_writes)
    if split_tiles:
        assert (part_writes == 1).all(), "partial scratch not written exactly once"
        if info is not None:
            info['part'] = part.copy()
        attention_combine(part, splits, T, HD, out, ldo, n_heads, writes)
    return writes
