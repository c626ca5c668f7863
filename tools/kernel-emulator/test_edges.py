from test_emu import *
run_gemm(128, 128, 128, 32, EPI_STORE_F32, pad=(0, 0, 0))
run_gemm(256, 256, 512, 96, EPI_STORE_F32, pad=(0, 0, 0))
run_gemm(128, 5, 8, 8, EPI_STORE_F32)
run_gemm(256, 200, 33, 8, EPI_ADD_F32, bias=True)
run_gated(128, 128, 64, 64, 32)
run_gated(256, 5, 8, 8, 8, bias=True)
run_gated(128, 140, 130, 136, 24)
run_attention(64, 64, 64, 1, 1, 0)
run_attention(64, 64, 128, 2, 1, 0)
run_attention(128, 128, 256, 4, 4, 0)
run_attention(64, 100, 100, 2, 1, 1)       # window 1: only itself
run_attention(64, 70, 300, 2, 2, 64)       # window == KT, T < S
run_attention(64, 3, 3, 1, 1, 0, scale=0.37)
print("ALL PASS" if all(ok for _, ok in results) else "SOME FAILED: " + ", ".join(n for n, ok in results if not ok))
