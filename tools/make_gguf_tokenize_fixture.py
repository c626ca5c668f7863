#!/usr/bin/env python3
"""Writes tests/fixtures/gguf/llama_tokenize_ids.json: llama.cpp's token ids (llama-tokenize, special
tokens parsed, BOS as the GGUF asks) for a sample text, per real model, as the reference for
tests/gguf_real_models.rs.

Usage: python tools/make_gguf_tokenize_fixture.py LLAMA_TOKENIZE NAME=MODEL.gguf [NAME=MODEL.gguf ...]
"""
import json
import subprocess
import sys
from pathlib import Path

SAMPLE = (
    "The quick brown fox jumps over the lazy dog. It's 12:30 on 2024-06-07; the price is $1,234.56 (3.5% off).\n"
    "Numbers: 0 7 42 123 4567 89012 1e-9 0x1F ١٢٣ ５６７ ½ Ⅻ.\n\n"
    "Unicode: café naïve Straße São Paulo Привет мир Ελληνικά 中文字符 日本語 한국어 😀👍🏽 ∑x² ≤ √2.\n"
    "Whitespace:  two   three    four\ttab\t\ttabs   \n    indented\n\n\nthree newlines\r\nCRLF\n"
    "Markup: <table><tr><td>x</td></tr></table> <b>bold</b> <h1>T</h1>\n"
    "Code: def f(x):\n    return x ** 2  # square\nif (a && !b) { printf(\"%d\\n\", a[i++]); }\n"
    "Contractions: I'm you're he's we've they'll I'd can't DON'T.\n"
    "Chat: <|im_start|>user\nhi<|im_end|> <start_of_turn>model\nok<end_of_turn>\n"
)


def main():
    binary, models = sys.argv[1], sys.argv[2:]
    doc = {"generator": "tools/make_gguf_tokenize_fixture.py (llama-tokenize --ids --no-escape)", "text": SAMPLE}
    for spec in models:
        name, path = spec.split("=", 1)
        cmd = [binary, "-m", path, "--ids", "--no-escape", "--log-disable", "--stdin"]
        res = subprocess.run(cmd, input=SAMPLE.encode(), capture_output=True, check=True)
        doc[name] = json.loads(res.stdout.decode().strip().splitlines()[-1])
    out = Path("tests/fixtures/gguf/llama_tokenize_ids.json")
    out.write_text(json.dumps(doc, ensure_ascii=False) + "\n")
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)} ids" for k, v in doc.items() if isinstance(v, list)))


if __name__ == "__main__":
    main()
