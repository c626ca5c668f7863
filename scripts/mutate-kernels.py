#!/usr/bin/env python3
"""Proves the CUDA tests can fail: injects, one at a time, the bugs that break real kernels (an index
off by one, a lane mapping, a dropped barrier, a wrong stride, a skipped tail, a short wait) into each
file of kernels/, rebuilds only the host build of the kernels (a shared library the engine loads from
TWOSSP_HOST_KERNELS), runs that kernel's tests from tests/cuda_parity.rs on it, and reports which
mutations the host run catches (a failed check, or an error of the emulation: out of bounds, race,
misalignment, deadlock) and which survive.

    scripts/mutate-kernels.py [--only FILE[,FILE]] [--json PATH]

Takes ~1 minute per mutation on 2 cores; prints a table per kernel file, then the survivors.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The tests of tests/cuda_parity.rs that exercise each file (name filters, run together).
TESTS = {
    "gemm.cu": ["gemm_epilogues_match_cpu_linear"],
    "gemv.cu": ["gemv_epilogues_match_cpu_linear"],
    "attention.cu": ["attention_matches_cpu_causal_attention"],
    "rope.cu": ["qkv_rope_matches_cpu_norms_and_rope"],
    "rmsnorm.cu": ["rmsnorm_kernels_match_cpu"],
    "embedding.cu": ["embedding_gather_matches_table_rows"],
    "nll.cu": ["row_nll_matches_cpu_nll"],
    "prune.cu": ["prune_helpers_are_exact"],
    "synthetic.cu": ["synthetic_models_are_finite_and_seeded"],
    "common.cuh": ["gemv_epilogues_match_cpu_linear", "rmsnorm_kernels_match_cpu"],
}

# (file, kind, what, original text (must occur exactly once), replacement)
MUTATIONS = [
    # gemm.cu
    ("gemm.cu", "off by one", "A rows bound M inclusive",
     "const bool ok = m0 + row < M && k < K;", "const bool ok = m0 + row <= M && k < K;"),
    ("gemm.cu", "lane mapping", "A ldmatrix rows from lane & 7",
     "const int a_row = wm * 64 + (lane & 15)", "const int a_row = wm * 64 + (lane & 7)"),
    ("gemm.cu", "lane mapping", "B ldmatrix k half from lane bit 4",
     "b_col = ((lane >> 3) & 1) * 8;", "b_col = ((lane >> 4) & 1) * 8;"),
    ("gemm.cu", "dropped barrier", "no barrier after the tile wait",
     "        __syncthreads();  // tile kt landed for everyone; tile kt-1's stage is free to refill\n", "\n"),
    ("gemm.cu", "short wait", "waits for one group too few",
     "cp_async_wait<T::STAGES - 2>();", "cp_async_wait<T::STAGES - 1>();"),
    ("gemm.cu", "wrong stride", "A tile rows stored at stride BK",
     "cp_async16(as + row * T::LDS + col,", "cp_async16(as + row * T::BK + col,"),
    ("gemm.cu", "skipped tail", "K tiles rounded down",
     "const int k_tiles = (K + T::BK - 1) / T::BK;", "const int k_tiles = K / T::BK;"),
    ("gemm.cu", "lane mapping", "epilogue column without the odd element",
     "const int n = n0 + wn * T::WT + j * 8 + 2 * t + (e & 1);", "const int n = n0 + wn * T::WT + j * 8 + 2 * t;"),
    ("gemm.cu", "dropped reduction step", "sum of squares misses lanes 16 apart",
     "            s += __shfl_xor_sync(0xffffffffu, s, 16);\n", "\n"),
    ("gemm.cu", "off by one", "gated up rows one past",
     "return within < T::WT / 2 ? neuron : ep.gate_offset + neuron;",
     "return within < T::WT / 2 ? neuron : ep.gate_offset + neuron + 1;"),
    # attention.cu
    ("attention.cu", "dropped barrier", "no barrier before refilling a K/V buffer",
     "        __syncthreads();  // this buffer is refilled by the next iteration's prefetch\n", "\n"),
    ("attention.cu", "short wait", "waits for the prefetch group only",
     "cp_async_wait<1>();", "cp_async_wait<2>();"),
    ("attention.cu", "lane mapping", "V ldmatrix.trans key half from lane bit 4",
     "ldmatrix_x4_trans(b, Vb + (kc * 16 + ((lane >> 3) & 1) * 8",
     "ldmatrix_x4_trans(b, Vb + (kc * 16 + ((lane >> 4) & 1) * 8"),
    ("attention.cu", "off by one", "a query does not see its own key",
     "kpos <= qpos &&", "kpos < qpos &&"),
    ("attention.cu", "skipped tail", "key tiles rounded down",
     "const int all_tiles = (key_end - tile_first + KT - 1) / KT;",
     "const int all_tiles = (key_end - tile_first) / KT;"),
    ("attention.cu", "dropped reduction step", "row sum misses the lane 2 apart",
     "            sum += __shfl_xor_sync(0xffffffffu, sum, 2);\n", "\n"),
    ("attention.cu", "skipped tail", "combine leaves out the last split",
     "for (int s = 0; s < splits; ++s) {\n            const float w",
     "for (int s = 0; s < splits - 1; ++s) {\n            const float w"),
    ("attention.cu", "wrong stride", "K rows at the query stride",
     "load_rows<HD>(Ks + (buf ^ 1) * L::TILE, k, ldkv,", "load_rows<HD>(Ks + (buf ^ 1) * L::TILE, k, ldq,"),
    # gemv.cu
    ("gemv.cu", "wrong stride", "k steps of 31 x 8",
     "k += 32 * 8)", "k += 31 * 8)"),
    ("gemv.cu", "lane mapping", "lanes 16-31 read the chunks of lanes 0-15",
     "for (int k = lane * 8; k < K;", "for (int k = (lane & 15) * 8; k < K;"),
    ("gemv.cu", "off by one", "activation rows one past",
     "const uint4 a = *(const uint4*)(A + m * lda + k);", "const uint4 a = *(const uint4*)(A + (m + 1) * lda + k);"),
    ("gemv.cu", "misaligned access", "weights read 8 bytes off",
     "const uint4 g = *(const uint4*)(w0 + k);", "const uint4 g = *(const uint4*)(w0 + k + 4);"),
    # rope.cu
    ("rope.cu", "dropped barrier", "no __syncwarp between the head load and RoPE",
     "        __syncwarp();\n        for (int i = lane; i < head_dim; i += 32) {", "        for (int i = lane; i < head_dim; i += 32) {"),
    ("rope.cu", "off by one", "rotation partner one further",
     "const int j = i < n_freq ? i + n_freq : i - n_freq;", "const int j = i < n_freq ? i + n_freq - 1 : i - n_freq;"),
    ("rope.cu", "wrong index", "angle of the token index, not its position",
     "cos_table[(long long)pos * n_freq + f]", "cos_table[(long long)t * n_freq + f]"),
    ("rope.cu", "wrong stride", "cache rows at the query width",
     ": k_cache + (long long)pos * kv_dim", ": k_cache + (long long)pos * q_dim"),
    # rmsnorm.cu
    ("rmsnorm.cu", "wrong stride", "mean over a quarter of the row",
     "return rsqrtf(s / (4 * d4) + eps);", "return rsqrtf(s / d4 + eps);"),
    ("rmsnorm.cu", "skipped tail", "last float4 of the row not written",
     "    for (int i = threadIdx.x; i < d4; i += blockDim.x) {\n        const float4 v = row[i], g = w4[i];",
     "    for (int i = threadIdx.x; i < d4 - 1; i += blockDim.x) {\n        const float4 v = row[i], g = w4[i];"),
    # common.cuh
    ("common.cuh", "dropped barrier", "block_sum reads partials before all are written",
     "    if (lane == 0) partial[warp] = v;\n    __syncthreads();", "    if (lane == 0) partial[warp] = v;"),
    ("common.cuh", "off by one", "block_sum reads one partial too many",
     "float w = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.f;",
     "float w = lane <= (int)(blockDim.x >> 5) ? partial[lane] : 0.f;"),
    ("common.cuh", "dropped reduction step", "warp_sum stops before offset 1",
     "for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);",
     "for (int o = 16; o > 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);"),
    # nll.cu
    ("nll.cu", "dropped barrier", "warp 0 reads the partials before they are written",
     "    __syncthreads();\n    if (warp == 0) {", "    if (warp == 0) {"),
    ("nll.cu", "off by one", "reads one partial too many",
     "m = lane < n_warps ? part_m[lane] : -INFINITY;", "m = lane <= n_warps ? part_m[lane] : -INFINITY;"),
    ("nll.cu", "skipped tail", "last logit of the row ignored",
     "for (int i = threadIdx.x; i < vocab; i += blockDim.x) {", "for (int i = threadIdx.x; i < vocab - 1; i += blockDim.x) {"),
    # prune.cu
    ("prune.cu", "wrong stride", "gathered rows read at the destination stride",
     "const bf16* s = src + (long long)idx[i] * ld_src;", "const bf16* s = src + (long long)idx[i] * ld_dst;"),
    ("prune.cu", "skipped tail", "last kept column not gathered",
     "for (int i = threadIdx.x; i < n_idx; i += blockDim.x) d[i] = s[idx[i]];",
     "for (int i = threadIdx.x; i < n_idx - 1; i += blockDim.x) d[i] = s[idx[i]];"),
    ("prune.cu", "skipped tail", "last partial row not summed",
     "for (int r = 0; r < rows; ++r) s += partial[(long long)r * ld + j];",
     "for (int r = 0; r < rows - 1; ++r) s += partial[(long long)r * ld + j];"),
    # embedding.cu
    ("embedding.cu", "skipped tail", "last 8 dims not written",
     "for (int i = threadIdx.x; i < d / 8; i += blockDim.x) {", "for (int i = threadIdx.x; i < d / 8 - 1; i += blockDim.x) {"),
    ("embedding.cu", "off by one", "row of the next token id",
     "(const uint4*)(table + (long long)ids[t] * d);", "(const uint4*)(table + (long long)(ids[t] + 1) * d);"),
    # synthetic.cu
    ("synthetic.cu", "wrong stride", "grid-stride loop skips elements",
     "for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += stride) {",
     "for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += stride + 1) {"),
]


def cargo_json(args):
    out = subprocess.run(["cargo", *args, "--message-format=json"], cwd=ROOT, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def build():
    """The cuda_parity test binary of the host build, and the command that built its kernel library."""
    msgs = cargo_json(["test", "--release", "--locked", "--features", "cuda-host", "--test", "cuda_parity",
                       "--no-run"])
    exe = next(m["executable"] for m in msgs if m.get("reason") == "compiler-artifact"
               and m["target"]["name"] == "cuda_parity" and m.get("executable"))
    out_dir = next(m["out_dir"] for m in msgs if m.get("reason") == "build-script-executed"
                   and "twossp-engine" in m["package_id"])
    command = json.loads(Path(out_dir, "host_kernels_command.json").read_text())
    return exe, command


def compile_library(command, kernels, library):
    sources = sorted(str(p) for p in kernels.glob("*.cu")) + [str(kernels / "host" / "runtime.cpp")]
    args = [command["compiler"], *command["flags"], "-I", str(kernels), "-o", str(library), "-x", "c++", *sources]
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_tests(exe, library, tests, timeout):
    env = dict(os.environ, TWOSSP_HOST_KERNELS=str(library), RUST_BACKTRACE="0")
    try:
        r = subprocess.run([exe, *tests, "--test-threads", "1"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout} s (a hang)"
    if r.returncode == 0:
        return True, ""
    for line in r.stdout.splitlines():  # the first failure, as the test reported it
        if line.startswith("  FAIL") or "Err` value:" in line or "panicked" in line and "Err" in line:
            return False, line.strip()[:220]
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    return False, (lines[-1] if lines else f"exit {r.returncode}")[:220]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated kernel files")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--timeout", type=int, default=300)
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    mutations = [m for m in MUTATIONS if not only or m[0] in only]
    exe, command = build()
    work = Path(tempfile.mkdtemp(prefix="twossp-mutants-"))
    results = []
    try:
        kernels = work / "kernels"
        library = work / "mutant.so"
        shutil.copytree(ROOT / "kernels", kernels)
        r = compile_library(command, kernels, library)
        if r.returncode != 0:
            sys.exit(f"the unmutated kernels do not compile:\n{r.stdout}")
        baseline = sorted({t for m in mutations for t in TESTS[m[0]]})
        ok, why = run_tests(exe, library, baseline, args.timeout)
        if not ok:
            sys.exit(f"the unmutated kernels fail their tests: {why}")
        for i, (file, kind, what, before, after) in enumerate(mutations, 1):
            source = (ROOT / "kernels" / file).read_text()
            if source.count(before) != 1:
                sys.exit(f"mutation {i} ({file}: {what}): its text occurs {source.count(before)} times, not once")
            (kernels / file).write_text(source.replace(before, after))
            start = time.time()
            r = compile_library(command, kernels, library)
            if r.returncode != 0:
                outcome, why = "does not compile", r.stdout.splitlines()[0][:200] if r.stdout else ""
            else:
                survived, why = run_tests(exe, library, TESTS[file], args.timeout)
                outcome = "SURVIVED" if survived else "caught"
            (kernels / file).write_text(source)
            results.append(dict(file=file, kind=kind, mutation=what, outcome=outcome, by=why,
                                seconds=round(time.time() - start, 1)))
            print(f"[{i}/{len(mutations)}] {file:13} {kind:22} {what}: {outcome} ({results[-1]['seconds']} s)"
                  + (f"\n      by: {why}" if why else ""), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("\n| kernel file | mutations | caught | survived |\n|---|---|---|---|")
    for file in dict.fromkeys(r["file"] for r in results):
        rs = [r for r in results if r["file"] == file]
        print(f"| {file} | {len(rs)} | {sum(r['outcome'] == 'caught' for r in rs)} | "
              f"{sum(r['outcome'] == 'SURVIVED' for r in rs)} |")
    survivors = [r for r in results if r["outcome"] == "SURVIVED"]
    total = len(results)
    print(f"\n{total - len(survivors)} of {total} mutations caught")
    for r in survivors:
        print(f"  survived: {r['file']}: {r['kind']}: {r['mutation']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
