#!/usr/bin/env python3
"""Summary table of a gpu-pack run (scripts/gpu-pack-run.sh): reads the logs and JSON files in
OUT_DIR and prints what it finds; missing or malformed files show as "-"."""
import json
import re
import sys
from pathlib import Path

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else ".")


def load(name):
    try:
        return json.loads((OUT / name).read_text())
    except (OSError, ValueError):
        return None


def find(obj, key):
    """The first value under `key` anywhere in obj (depth first), or None."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            found = find(v, key)
            if found is not None:
                return found
    return None


def num(x, fmt="{:.2f}"):
    return fmt.format(x) if isinstance(x, (int, float)) else "-"


def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def table(title, headers, rows):
    print(f"\n{title}")
    if not rows:
        print("  (no data)")
        return
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    for r in [headers] + rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def steps():
    rows = []
    try:
        for line in (OUT / "status.txt").read_text().splitlines():
            name, rc, secs = line.split()
            rows.append([name, "ok" if rc == "0" else f"exit {rc}" + (" (timeout)" if rc in ("124", "137") else ""), secs])
    except (OSError, ValueError):
        pass
    table("steps", ["step", "result", "seconds"], rows)


def parity():
    try:
        log = (OUT / "parity.log").read_text(errors="replace")
    except OSError:
        log = ""
    results = re.findall(r"^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", log, re.M)
    passed, failed, ignored = (sum(int(r[i]) for r in results) for i in range(3))
    failures = re.findall(r"^test (\S+) \.\.\. FAILED", log, re.M)
    rows = [["passed", passed], ["failed", failed], ["ignored", ignored]]
    rows += [["  failed test", f] for f in failures]
    table("parity tests (cuda_parity)", ["", "count"], rows if log else [])


def kernel_rows(data):
    if isinstance(data, dict):
        data = data.get("rows") or data.get("kernels") or data.get("results") or []
    rows = []
    for r in data if isinstance(data, list) else []:
        if not isinstance(r, dict):
            continue
        name = r.get("name") or r.get("kernel") or "?"
        ms = rate = pct = "-"
        for k, v in r.items():
            lk = k.lower()
            if not isinstance(v, (int, float)):
                continue
            if "tflop" in lk:
                rate = f"{v:.1f} TFLOP/s"
            elif "gb" in lk and rate == "-":
                rate = f"{v:.0f} GB/s"
            elif "pct" in lk or "percent" in lk:
                pct = f"{v:.0f} %"
            elif lk in ("ms", "time_ms", "median_ms", "mean_ms"):
                ms = f"{v:.3f}"
            elif lk in ("us", "time_us", "median_us") and ms == "-":
                ms = f"{v / 1e3:.3f}"
        rows.append([name, ms, rate, pct])
    return rows


def engine_vs_torch():
    ev, torch, bench = load("eval.json"), load("torch.json"), load("bench.json")
    e_tps = find(ev, "tokens_per_second")
    t_tps = find(torch, "tokens_per_s")
    dense = find(bench, "baseline_result") or find(bench, "result")
    e_prefill = find(dense, "prefill_seconds")
    e_decode = find(dense, "decode_tokens_per_s")
    t_prefill = find(torch, "prefill_ms")
    t_decode = find(torch, "decode_tok_s")
    e_prefill_ms = e_prefill * 1e3 if isinstance(e_prefill, (int, float)) else None
    rows = [
        ["perplexity windows, tokens/s", num(e_tps, "{:.0f}"), num(t_tps, "{:.0f}"), num(ratio(e_tps, t_tps))],
        ["dense prefill, ms", num(e_prefill_ms, "{:.1f}"), num(t_prefill, "{:.1f}"), num(ratio(t_prefill, e_prefill_ms))],
        ["dense decode, tokens/s", num(e_decode, "{:.1f}"), num(t_decode, "{:.1f}"), num(ratio(e_decode, t_decode))],
        ["perplexity (random weights)", num(find(ev, "ppl"), "{:.0f}"), num(find(torch, "ppl"), "{:.0f}"), ""],
    ]
    table("engine vs PyTorch (synthetic Llama-2-7B, bf16)", ["metric", "engine", "torch", "engine speed-up"], rows)


def prune_and_bench():
    pr, bench = load("prune.json"), load("bench.json")
    seconds = find(pr, "seconds") or {}
    speedup = find(bench, "speedup") or {}
    rows = [
        ["prune stage 1, s", num(seconds.get("stage1") if isinstance(seconds, dict) else None)],
        ["prune stage 2, s", num(seconds.get("stage2") if isinstance(seconds, dict) else None)],
        ["prune total, s", num(seconds.get("total") if isinstance(seconds, dict) else None)],
        ["sparsity achieved", num(find(pr, "sparsity_achieved"), "{:.4f}")],
        ["attention removed", num(find(pr, "n_attn_removed"), "{}")],
        ["pruned/dense prefill speed-up", num(speedup.get("prefill") if isinstance(speedup, dict) else None)],
        ["pruned/dense decode speed-up", num(speedup.get("decode") if isinstance(speedup, dict) else None)],
    ]
    table("2SSP at 37.5 % (synthetic Llama-2-7B)", ["metric", "value"], rows)


def main():
    print("=" * 30 + " summary " + "=" * 30)
    try:
        print((OUT / "nvidia-smi.txt").read_text().strip())
    except OSError:
        pass
    steps()
    parity()
    table("kernels (cuda_kernels)", ["kernel", "ms", "throughput", "of ceiling"], kernel_rows(load("kernels.json")))
    engine_vs_torch()
    prune_and_bench()


if __name__ == "__main__":
    main()
