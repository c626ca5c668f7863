#!/usr/bin/env python3
"""llama.cpp token ids of whole evaluation sets, as a committed reference for the engine's tokenizer.

For each data file, the documents are joined with "\\n\\n" (the eval protocol) and tokenized by
llama.cpp's `llama-tokenize` on the original GGUF, without BOS. The fixture stores the number of
tokens, the sha256 of the ids (little-endian u32) and the first ids, so a test can compare the whole
sequence without committing it. Build llama.cpp with benches/peers/build-llama-cpp.sh.

    python tools/llama_tokenize_reference.py --llama-bin ../peers/llama.cpp/build/bin \
        --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2 \
        --data data/wiki.jsonl data/news.jsonl data/books.jsonl --out tests/fixtures/real/llama_tokenize_smollm2.json
"""
import argparse, hashlib, json, os, struct, subprocess, tempfile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    result = {"model": a.name, "gguf_sha256": sha256_file(a.gguf), "tool": "llama-tokenize --ids --no-bos", "sets": {}}
    for path in a.data:
        docs = [json.loads(l)["text"] for l in open(path, encoding="utf-8") if l.strip()]
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
            f.write("\n\n".join(docs))
        try:
            out = subprocess.run([os.path.join(a.llama_bin, "llama-tokenize"), "-m", a.gguf, "-f", f.name,
                                  "--ids", "--no-bos", "--log-disable"], check=True, capture_output=True, text=True).stdout
        finally:
            os.unlink(f.name)
        ids = json.loads(out.strip().splitlines()[-1])
        name = os.path.splitext(os.path.basename(path))[0]
        result["sets"][name] = {
            "file_sha256": sha256_file(path), "n_tokens": len(ids),
            "ids_sha256": hashlib.sha256(struct.pack(f"<{len(ids)}I", *ids)).hexdigest(), "first_ids": ids[:32],
        }
        print(name, len(ids))
    json.dump(result, open(a.out, "w"), indent=1)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


if __name__ == "__main__":
    main()
