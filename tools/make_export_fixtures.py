#!/usr/bin/env python3
"""Check the engine's exports in HF transformers and store what transformers computes on them.

For every case of tests/fixtures/exports/cases.json this script runs the engine command (an
`export` or a `prune` of a tiny fixture), loads the written folder with
`AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, output_loading_info=True)`,
fails unless there are no missing, unexpected or mismatched keys, and writes
`<case>/reference.safetensors` (the source fixture's input ids and the f32 logits transformers
computes on the exported folder) and `<case>/manifest.json` (sha256 of every file the exporter
wrote, the class transformers loaded, versions). tests/export.rs re-runs each command, compares
the bytes with the manifest (so CI fails when the exporter changes and these fixtures were not
regenerated) and the engine's logits on the export with transformers' (max |diff| <= 1e-4).

Run from the repository root, after `cargo build --release`, in a venv with torch and
transformers 5.x:
    python tools/make_export_fixtures.py
Pinned versions it was run with: torch 2.15.0 (CPU), transformers 5.24.0, safetensors 0.8.0.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
EXPORTS = FIXTURES / "exports"
ENGINE = ROOT / "target" / "release" / "twossp-engine"
# Files whose bytes are the exporter's output (the report holds timings and paths).
NOT_HASHED = {"pruning_report.json"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_case(case: dict, out: Path) -> None:
    args = [a.replace("{F}", str(FIXTURES)).replace("{OUT}", str(out)) for a in case["args"]]
    done = subprocess.run([str(ENGINE), *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{case['name']}: engine failed: {done.stderr.strip()}")


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cases = json.loads((EXPORTS / "cases.json").read_text())["cases"]
    rows = []
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            run_case(case, out)
            model, info = AutoModelForCausalLM.from_pretrained(
                out, trust_remote_code=True, output_loading_info=True, dtype=torch.float32
            )
            problems = {k: v for k, v in info.items() if v}
            if problems:
                sys.exit(f"{case['name']}: transformers reports {problems}")
            model.eval()
            ids = load_file(str(FIXTURES / case["source"] / "reference.safetensors"))["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=ids.reshape(1, -1)).logits[0].float().contiguous()
            files = {p.name: sha256(p) for p in sorted(out.iterdir()) if p.name not in NOT_HASHED}
            dest = EXPORTS / case["name"]
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            save_file({"input_ids": ids, "logits": logits}, str(dest / "reference.safetensors"))
            manifest = {
                "case": case["name"],
                "hf_class": type(model).__name__,
                "loading_info": {k: list(v) for k, v in info.items()},
                "files_sha256": files,
                "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__},
            }
            (dest / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            rows.append((case["name"], type(model).__name__, len(files), tuple(logits.shape)))
    for name, cls, n, shape in rows:
        print(f"{name:<32} {cls:<22} files {n:>2}  logits {shape}  loaded with no missing/unexpected keys")


if __name__ == "__main__":
    main()
