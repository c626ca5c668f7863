"""Host plan (attention_split, kernels.rs) vs the kernel's own key range, exhaustively: every tile the kernel's
single query block would visit must be covered by splits * split_tiles, and every split must start inside the range."""
from emu import attention_split
bad = checked = 0
for T in range(1, 65):
    for S in range(T, 1300, 1):
        for window in (0, 1, 2, 63, 64, 65, 100, 127, 128, 129, 500, 1000, 4096):
            for heads in (1, 2, 4, 8, 16, 32, 64, 128, 264, 300):
                plan = attention_split(T, S, heads, 64, window)
                if not plan:
                    continue
                st, sp = plan
                first_pos = S - T; last_q = T - 1
                key_end = first_pos + last_q + 1
                key_begin = max(0, first_pos - window + 1) if window > 0 else 0
                tile_first = key_begin // 64 * 64
                all_tiles = (key_end - tile_first + 63) // 64
                checked += 1
                if not (sp * st >= all_tiles and (sp - 1) * st < all_tiles and sp >= 2):
                    bad += 1
                    if bad < 5: print("MISMATCH", T, S, window, heads, plan, all_tiles)
print(f"checked {checked} split plans, {bad} mismatches")
