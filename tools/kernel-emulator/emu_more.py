"""Line-by-line numpy transliterations of kernels/gemv.cu, rope.cu, nll.cu, rmsnorm.cu (warp-vectorised:
arrays of shape (32,) are one value per lane). Global memory: flat numpy arrays; vector loads assert alignment."""
import numpy as np
from emu import LANE, f2bf, bf2f, shfl_xor, EPI_STORE_F32, EPI_STORE_BF16, EPI_ADD_F32, EPI_GATED_BF16, \
    activation, Epilogue

f32 = np.float32


def warp_sum(v):  # common.cuh: butterfly 16, 8, 4, 2, 1
    for o in (16, 8, 4, 2, 1):
        v = (v + shfl_xor(v, o)).astype(f32)
    return v


def warp_max(v):
    for o in (16, 8, 4, 2, 1):
        v = np.fmax(v, shfl_xor(v, o))
    return v


def block_sum(v, nthreads):  # v: (nthreads,) per-thread values
    nw = nthreads // 32
    w = np.stack([warp_sum(v[32 * i:32 * i + 32]) for i in range(nw)])
    partial = np.full(32, np.nan, f32)  # __shared__ partial[32]: uninitialised
    partial[:nw] = w[:, 0]  # lane 0 of each warp
    x = np.where(LANE < nw, partial, f32(0)).astype(f32)
    return warp_sum(x)[0]


# ------------------------------------------------------------------ gemv.cu
GEMV_MAX_M = 4


def ld_uint4(mem, off):  # *(const uint4*)(p): 16 bytes = 8 bf16
    off = int(off)
    assert off % 8 == 0, f"uint4 load at element {off}: not 16-byte aligned"
    assert 0 <= off and off + 8 <= mem.size, f"uint4 load out of bounds at {off}"
    return mem[off:off + 8]


def dot8(w, a, acc):
    # __nv_bfloat162 w2[i] = {w[2i] (.x, low address), w[2i+1]}; fmaf(x*x) then fmaf(y*y), i = 0..3
    wf, af = bf2f(w), bf2f(a)
    for i in range(4):
        acc = f32(wf[2 * i] * af[2 * i] + acc)  # bf16*bf16 is exact in f32, so fmaf == mul + add here
        acc = f32(wf[2 * i + 1] * af[2 * i + 1] + acc)
    return acc


def row_dots(TWO, A, lda, W, w0, w1, M, K):
    acc = np.zeros((GEMV_MAX_M, 32), f32)
    up = np.zeros((GEMV_MAX_M, 32), f32)
    for lane in range(32):
        for k in range(lane * 8, K, 32 * 8):
            g = ld_uint4(W, w0 + k)
            u = g
            if TWO:
                u = ld_uint4(W, w1 + k)
            for m in range(GEMV_MAX_M):
                if m < M:
                    a = ld_uint4(A, m * lda + k)
                    acc[m, lane] = dot8(g, a, acc[m, lane])
                    if TWO:
                        up[m, lane] = dot8(u, a, up[m, lane])
    for m in range(GEMV_MAX_M):
        acc[m] = warp_sum(acc[m])
        if TWO:
            up[m] = warp_sum(up[m])
    return acc, up


def gemv_bf16(A, lda, W, ldw, M, N, K, ep, sumsq_order=None):
    """launcher gemv(): grid (ceil(N/8)), 256 threads."""
    blockDim = 256
    for bx in range((N + 7) // 8):
        for warp in range(blockDim >> 5):
            n = bx * (blockDim >> 5) + warp
            if n >= N:
                continue  # return
            if ep.kind != EPI_GATED_BF16:
                acc, up = row_dots(False, A, lda, W, n * ldw, None, M, K)
                for m in range(GEMV_MAX_M):
                    for lane in range(32):
                        if m < M and lane == m:
                            epilogue_store1(ep, m, n, acc[m, lane])
                continue
            acc, up = row_dots(True, A, lda, W, n * ldw, (ep.gate_offset + n) * ldw, M, K)
            sq = np.zeros(32, np.float32)
            for m in range(GEMV_MAX_M):
                for lane in range(32):
                    if m < M and lane == m:
                        v = epilogue_gated1(ep, m, n, acc[m, lane], up[m, lane])
                        sq[lane] = f32(v * v)
            sq = warp_sum(sq)
            if ep.sumsq is not None:  # lane 0 writes row 0
                ep.sumsq[n] = sq[0]


def epilogue_store1(e, m, n, v):
    v = f32(v)
    if e.bias is not None:
        v = f32(v + e.bias[n])
    i = m * e.ldo + n
    e.writes[i] += 1
    if e.kind == EPI_STORE_F32:
        e.out[i] = v
    elif e.kind == EPI_STORE_BF16:
        e.out[i] = f2bf(v)
    else:
        e.out[i] = f32(e.out[i] + v)


def epilogue_gated1(e, m, n, gate, up):
    gate, up = f32(gate), f32(up)
    if e.bias is not None:
        gate = f32(gate + e.bias[n])
        up = f32(up + e.bias[e.gate_offset + n])
    v = f32(activation(e.act, gate) * up)
    i = m * e.ldo + n
    e.writes[i] += 1
    e.out[i] = f2bf(v)
    return v


# ------------------------------------------------------------------ rope.cu
ROPE_MAX_HEAD_DIM = 256


def qkv_rope(qkv, T, n_heads, n_kv_heads, head_dim, n_freq, cos_table, sin_table, q_norm, k_norm, norm_offset, eps,
             first, q_out, k_cache, v_cache, writes):
    """launcher: grid (T), block 32 * min(n_heads + 2 n_kv_heads, 32). writes: dict name -> counts array."""
    assert head_dim <= ROPE_MAX_HEAD_DIM and 2 * n_freq <= head_dim
    heads = min(n_heads + 2 * n_kv_heads, 32)
    n_warps = heads
    norm_offset, eps = f32(norm_offset), f32(eps)
    for t in range(T):
        buf = np.full((32, ROPE_MAX_HEAD_DIM), np.nan, f32)  # __shared__, uninitialised
        q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
        pos = first + t
        src_row = t * (q_dim + 2 * kv_dim)
        for warp in range(n_warps):
            h = buf[warp]
            for head in range(warp, n_heads + 2 * n_kv_heads, n_warps):
                is_q, is_v = head < n_heads, head >= n_heads + n_kv_heads
                src = src_row + head * head_dim
                if is_q:
                    dst_arr, dst, name = q_out, t * q_dim + head * head_dim, 'q'
                elif is_v:
                    dst_arr, dst, name = v_cache, pos * kv_dim + (head - n_heads - n_kv_heads) * head_dim, 'v'
                else:
                    dst_arr, dst, name = k_cache, pos * kv_dim + (head - n_heads) * head_dim, 'k'
                if is_v:
                    for i0 in range(0, head_dim, 32):
                        i = i0 + LANE[i0 + LANE < head_dim]
                        dst_arr[dst + i] = qkv[src + i]
                        writes[name][dst + i] += 1
                    continue
                for i0 in range(0, head_dim, 32):
                    i = i0 + LANE[i0 + LANE < head_dim]
                    h[i] = bf2f(qkv[src + i])
                norm = q_norm if is_q else k_norm
                scale = f32(1)
                if norm is not None:
                    s = np.zeros(32, f32)
                    for i0 in range(0, head_dim, 32):
                        act = i0 + LANE < head_dim
                        i = np.minimum(i0 + LANE, head_dim - 1)
                        s = np.where(act, s + h[i] * h[i], s).astype(f32)
                    scale = f32(1) / np.sqrt(f32(warp_sum(s)[0] / f32(head_dim) + eps), dtype=f32)  # rsqrtf
                # __syncwarp()
                for i0 in range(0, head_dim, 32):
                    i = i0 + LANE[i0 + LANE < head_dim]
                    w = (norm_offset + norm[i]).astype(f32) if norm is not None else np.ones(len(i), f32)
                    v = (h[i] * scale * w).astype(f32)
                    rot = i < 2 * n_freq
                    ir = i[rot]
                    f = np.where(ir < n_freq, ir, ir - n_freq)
                    j = np.where(ir < n_freq, ir + n_freq, ir - n_freq)
                    wj = (norm_offset + norm[j]).astype(f32) if norm is not None else np.ones(len(j), f32)
                    partner = (h[j] * scale * wj).astype(f32)
                    c, sn = cos_table[pos * n_freq + f], sin_table[pos * n_freq + f]
                    vr = v[rot]
                    v[rot] = np.where(ir < n_freq, vr * c - partner * sn, vr * c + partner * sn).astype(f32)
                    dst_arr[dst + i] = f2bf(v)
                    writes[name][dst + i] += 1
                # __syncwarp()


# ------------------------------------------------------------------ nll.cu
def capped(v, cap):
    return (np.tanh(f32(v / cap)) * cap).astype(f32) if cap > 0 else np.asarray(v, f32)


def lse_merge(m, s, m2, s2):  # vectorised over lanes
    mx = np.fmax(m, m2)
    both_empty = mx == -np.inf
    with np.errstate(invalid='ignore'):
        s_new = (s * np.exp(m - mx) + s2 * np.exp(m2 - mx)).astype(f32)
    return np.where(both_empty, m, mx).astype(f32), np.where(both_empty, s, s_new).astype(f32)


def row_nll(logits, targets, rows, vocab, cap, nll, blockDim=512):
    cap = f32(cap)
    for r in range(rows):
        row = logits[r * vocab:(r + 1) * vocab]
        m = np.full(blockDim, -np.inf, f32)
        s = np.zeros(blockDim, f32)
        tid = np.arange(blockDim)
        for i0 in range(0, vocab, blockDim):
            act = i0 + tid < vocab
            v = capped(row[np.minimum(i0 + tid, vocab - 1)], cap)
            with np.errstate(invalid='ignore', over='ignore'):
                gt = v > m
                s_gt = (s * np.exp(m - v) + f32(1)).astype(f32)
                s_le = (s + np.exp(v - m)).astype(f32)
            s_le = np.where(v != -np.inf, s_le, s).astype(f32)  # else if (v != -INFINITY)
            s = np.where(act, np.where(gt, s_gt, s_le), s).astype(f32)
            m = np.where(act & gt, v, m).astype(f32)
        m, s = m.reshape(-1, 32), s.reshape(-1, 32)
        for wi in range(blockDim // 32):
            for o in (16, 8, 4, 2, 1):
                m2, s2 = shfl_xor(m[wi], o), shfl_xor(s[wi], o)
                m[wi], s[wi] = lse_merge(m[wi], s[wi], m2, s2)
        part_m = np.full(32, np.nan, f32)
        part_s = np.full(32, np.nan, f32)
        n_warps = blockDim >> 5
        part_m[:n_warps], part_s[:n_warps] = m[:, 0], s[:, 0]
        mm = np.where(LANE < n_warps, part_m, -np.inf).astype(f32)
        ss = np.where(LANE < n_warps, part_s, 0).astype(f32)
        for o in (16, 8, 4, 2, 1):
            mm, ss = lse_merge(mm, ss, shfl_xor(mm, o), shfl_xor(ss, o))
        nll[r] = f32(mm[0] + np.log(ss[0]) - capped(row[targets[r]], cap))


# ------------------------------------------------------------------ rmsnorm.cu
def ld_float4(mem, base, i):
    off = base + 4 * i
    assert off % 4 == 0 and off + 4 <= mem.size
    return mem[off:off + 4]


def inv_rms(mem, base, d4, eps, blockDim=256):
    s = np.zeros(blockDim, f32)
    for tid in range(blockDim):
        for i in range(tid, d4, blockDim):
            v = ld_float4(mem, base, i)
            s[tid] = f32(s[tid] + f32(f32(f32(v[0] * v[0] + v[1] * v[1]) + v[2] * v[2]) + v[3] * v[3]))
    s = block_sum(s, blockDim)
    return f32(1) / np.sqrt(f32(s / f32(4 * d4) + f32(eps)), dtype=f32)


def rmsnorm_bf16(x, w, T, d, offset, eps, out, writes, blockDim=256):
    offset = f32(offset)
    for t in range(T):
        d4 = d // 4
        inv = inv_rms(x, t * d, d4, eps, blockDim)
        for i in range(d4):  # every thread's i = tid + k*blockDim covers 0..d4-1 once
            v, g = ld_float4(x, t * d, i), ld_float4(w, 0, i)
            o = (v * inv * (offset + g)).astype(f32)
            base = t * d + 4 * i  # dst = (bfloat162*)(out + t*d); dst[2i] = elements 4i, 4i+1; dst[2i+1] = 4i+2, 4i+3
            out[base:base + 4] = f2bf(o)
            writes[base:base + 4] += 1


def add_rmsnorm(x, branch, w, T, d, offset, eps, writes, blockDim=256):
    offset = f32(offset)
    for t in range(T):
        d4 = d // 4
        inv = inv_rms(branch, t * d, d4, eps, blockDim)
        for i in range(d4):
            v, g = ld_float4(branch, t * d, i), ld_float4(w, 0, i)
            o = ld_float4(x, t * d, i).copy()
            o = (o + (v * inv * (offset + g)).astype(f32)).astype(f32)
            x[t * d + 4 * i:t * d + 4 * i + 4] = o
            writes[t * d + 4 * i:t * d + 4 * i + 4] += 1
