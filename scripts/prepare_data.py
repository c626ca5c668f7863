#!/usr/bin/env python3
"""Turn the downloaded source artifacts into the jsonl files under data/.

Called by scripts/fetch-data.sh; every subcommand reads one downloaded artifact
(wheel, npm tarball, .deb) directly, without unpacking it on disk, and writes one
jsonl file atomically (temporary file + rename). One JSON object per line,
UTF-8, ensure_ascii=False.

  prepare_data.py wiki    GENSIM_WHEEL OUT   # {"title", "text"}: 106 enwiki articles
  prepare_data.py news    GENSIM_WHEEL OUT   # {"text"}: Lee background corpus (ABC news)
  prepare_data.py books   JANEAUSTENR_DEB OUT # {"title", "text"}: six Austen novels
  prepare_data.py sotu    SOTU_TGZ OUT       # {"year", "name", "text"}: 233 addresses
  prepare_data.py summary OUT...             # docs / words / bytes / sha256 table

Dependencies: the standard library, plus mwparserfromhell (wiki) and rdata (books),
imported lazily so that news/sotu/summary work without them.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import warnings
import zipfile
import zlib

WIKI_MEMBER = (
    "gensim/test/test_data/"
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
NEWS_MEMBER = "gensim/test/test_data/lee_background.cor"
AUSTEN_DATA_DIR = "usr/lib/R/site-library/janeaustenr/data/"
# (R object name, title), in publication order.
AUSTEN_NOVELS = [
    ("sensesensibility", "Sense and Sensibility"),  # 1811
    ("prideprejudice", "Pride and Prejudice"),  # 1813
    ("mansfieldpark", "Mansfield Park"),  # 1814
    ("emma", "Emma"),  # 1815
    ("northangerabbey", "Northanger Abbey"),  # 1817 (Dec 1817, with Persuasion)
    ("persuasion", "Persuasion"),  # 1817
]


def die(msg: str) -> None:
    print(f"prepare_data.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def write_jsonl(path: str, records) -> int:
    """Write records atomically; return the number written."""
    tmp = f"{path}.tmp.{os.getpid()}"
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return n


def expect(what: str, got: int, want: int) -> None:
    if got != want:
        die(f"{what}: expected {want}, got {got}")


# --------------------------------------------------------------------------- wiki

NS_LINK_PREFIXES = ("file:", "image:", "media:", "category:")
REF_RE = re.compile(r"<ref\b[^>]*/>|<ref\b[^>]*>.*?</ref\s*>", re.IGNORECASE | re.DOTALL)
MIN_WORDS = 8


def clean_article(wikitext: str) -> list[str]:
    """Strip wiki markup; return the kept paragraphs (lines of >= 8 words).

    The recipe of /work/shared/NOTES-offline-data.md section 1.1 (drop top-level
    templates and ref/table/gallery/math tags, strip_code, keep lines of 8+ words,
    drop File:/Image:/Category:/thumb| lines), plus three fixes for leftovers seen
    in the output: File/Image/Media/Category links are removed before strip_code
    (their captions otherwise leak into prose as "left|thumb|upright|..."),
    <ref>...</ref> that mwparserfromhell left unparsed (malformed markup) are cut
    out, and lines that still carry table or link syntax ("|" at the start, "||",
    "thumb|", "[[", "{{") are dropped.
    """
    import mwparserfromhell as mw

    code = mw.parse(wikitext)

    def remove(nodes) -> None:
        for node in nodes:
            try:
                code.remove(node)
            except ValueError:  # already removed together with its parent
                pass

    remove(code.filter_templates(recursive=False))
    remove(
        code.filter_tags(
            matches=lambda n: str(n.tag).lower() in ("ref", "table", "gallery", "math"),
            recursive=False,
        )
    )
    remove(
        [
            link
            for link in code.filter_wikilinks(recursive=False)
            if str(link.title).strip().lower().startswith(NS_LINK_PREFIXES)
        ]
    )
    kept = []
    for line in code.strip_code().split("\n"):
        line = REF_RE.sub("", line).strip()
        if len(line.split()) < MIN_WORDS:
            continue
        if line.startswith(("Category:", "File:", "Image:", "thumb|", "|", "!", "{|")):
            continue
        if any(s in line for s in ("||", "thumb|", "[[", "{{")):
            continue
        kept.append(line)
    return kept


def cmd_wiki(wheel: str, out: str) -> None:
    import xml.etree.ElementTree as ET

    with zipfile.ZipFile(wheel) as zf, zf.open(WIKI_MEMBER) as raw:
        root = ET.parse(bz2.open(raw)).getroot()
    ns = root.tag.split("}")[0] + "}"
    pages = redirects = 0
    records = []
    for page in root.iter(ns + "page"):
        pages += 1
        title = page.findtext(ns + "title") or ""
        text = page.findtext(f"{ns}revision/{ns}text") or ""
        if text.lstrip().upper().startswith("#REDIRECT"):
            redirects += 1
            continue
        records.append({"title": title, "text": "\n".join(clean_article(text))})
    expect("enwiki pages", pages, 206)
    expect("enwiki redirects", redirects, 100)
    empty = [r["title"] for r in records if not r["text"]]
    if empty:
        die(f"articles with no text left: {empty}")
    write_jsonl(out, records)


# --------------------------------------------------------------------------- news


def cmd_news(wheel: str, out: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(NEWS_MEMBER).decode("utf-8")
    # One article per line; the last line has no trailing newline.
    docs = [line.strip() for line in raw.split("\n")]
    docs = [d for d in docs if d]
    expect("lee_background articles", len(docs), 300)
    write_jsonl(out, ({"text": d} for d in docs))


# -------------------------------------------------------------------------- books


def read_deb_member_data(deb: str, prefix: str) -> dict[str, bytes]:
    """Return {relative path: bytes} of files under `prefix` in a .deb's data.tar.*.

    A .deb is an `ar` archive; parsed here so that dpkg-deb is not needed.
    """
    with open(deb, "rb") as f:
        blob = f.read()
    if not blob.startswith(b"!<arch>\n"):
        die(f"{deb}: not an ar archive")
    pos = 8
    data_tar = None
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[0:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = blob[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            data_tar = body
            break
        pos += 60 + size + (size & 1)
    if data_tar is None:
        die(f"{deb}: no data.tar member")
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data_tar), mode="r:*") as tf:
        for m in tf.getmembers():
            path = m.name[2:] if m.name.startswith("./") else m.name
            if m.isfile() and path.startswith(prefix):
                files[path[len(prefix) :]] = tf.extractfile(m).read()
    return files


def austen_text(lines) -> str:
    """Paragraphs (separated by blank lines) -> "\\n\\n"; lines inside one -> " "."""
    paragraphs, current = [], []
    for line in lines:
        line = "" if line is None else str(line).strip()  # NA -> blank
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def cmd_books(deb: str, out: str) -> None:
    import rdata

    files = read_deb_member_data(deb, AUSTEN_DATA_DIR)
    for need in ("Rdata.rdx", "Rdata.rdb"):
        if need not in files:
            die(f"{deb}: missing {AUSTEN_DATA_DIR}{need}")

    def parse(raw: bytes):
        with warnings.catch_warnings():
            # rdata warns "Unknown file type: assumed RDS" for lazy-load blobs.
            warnings.simplefilter("ignore")
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    # R lazy-load database: the .rdx index (gzip) maps each object to an
    # (offset, length) in the .rdb; each blob is a 4-byte length + zlib stream.
    index = parse(gzip.decompress(files["Rdata.rdx"]))
    variables = {str(k): v for k, v in index["variables"].items()}
    rdb = files["Rdata.rdb"]
    records = []
    for obj, title in AUSTEN_NOVELS:
        if obj not in variables:
            die(f"janeaustenr: object {obj!r} not found (have {sorted(variables)})")
        off, length = (int(x) for x in variables[obj])
        lines = parse(zlib.decompress(rdb[off + 4 : off + length]))
        if missing := [i for i, l in enumerate(lines) if l is None]:
            print(f"books: {title}: {len(missing)} NA lines treated as blank", file=sys.stderr)
        records.append({"title": title, "text": austen_text(lines)})
    write_jsonl(out, records)


# --------------------------------------------------------------------------- sotu

SOTU_FILE_RE = re.compile(r"^package/data/(\d{4})_[a-z0-9_]+\.json$")


def cmd_sotu(tgz: str, out: str) -> None:
    speeches = []
    with tarfile.open(tgz, "r:gz") as tf:
        for m in tf.getmembers():
            if m.isfile() and SOTU_FILE_RE.match(m.name):
                d = json.loads(tf.extractfile(m).read().decode("utf-8"))
                speeches.append((m.name, d))
    expect("SOTU addresses", len(speeches), 233)
    # Chronological order. Two years have two addresses (1953 Truman then
    # Eisenhower, 1961 Eisenhower then Kennedy): within a year the president
    # whose first address is earlier (the outgoing one) comes first.
    first_year: dict[str, int] = {}
    for _, d in speeches:
        first_year[d["name"]] = min(first_year.get(d["name"], 9999), int(d["year"]))
    speeches.sort(key=lambda s: (int(s[1]["year"]), first_year[s[1]["name"]], s[0]))
    records = [
        {"year": int(d["year"]), "name": d["name"], "text": d["text"].strip()}
        for _, d in speeches
    ]
    write_jsonl(out, records)


# ------------------------------------------------------------------------ summary


def cmd_summary(paths: list[str]) -> None:
    rows = []
    for path in paths:
        docs = words = text_bytes = 0
        h = hashlib.sha256()
        with open(path, "rb") as f:
            raw = f.read()
        h.update(raw)
        for line in raw.decode("utf-8").splitlines():
            rec = json.loads(line)
            docs += 1
            words += len(rec["text"].split())
            text_bytes += len(rec["text"].encode("utf-8"))
        rows.append((os.path.basename(path), docs, words, text_bytes, len(raw), h.hexdigest()))
    header = ("file", "docs", "words", "text_bytes", "file_bytes", "sha256")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).rjust(w) if isinstance(c, int) else str(c).ljust(w)
                        for c, w in zip(r, widths)).rstrip())
    print("(words: whitespace-separated tokens of the text fields; text_bytes: their UTF-8 size)")


def main(argv: list[str]) -> None:
    cmds = {"wiki": cmd_wiki, "news": cmd_news, "books": cmd_books, "sotu": cmd_sotu}
    if len(argv) >= 2 and argv[1] == "summary":
        cmd_summary(argv[2:])
    elif len(argv) == 4 and argv[1] in cmds:
        cmds[argv[1]](argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
