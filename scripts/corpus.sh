#!/usr/bin/env bash
# Builds the training corpus for activation traces: real English prose that is NOT the held-out GPL-3.
#   1. The Python Language Reference and library topics that CPython ships as `pydoc_data.topics` (the text
#      `help("naming")` prints; PSF license), cut into sections at their "====" and "----" headings.
#   2. The licenses in /usr/share/common-licenses that are not GNU licenses (Apache-2.0, MPL-2.0, Artistic,
#      CC0-1.0); GPL-*, LGPL-* and GFDL-* are left out, being GPL-3 itself or close relatives of it.
# Sections that repeat text of others are dropped (the topics overlap). Documents are shuffled with a fixed seed and separated by two blank lines (`spike trace --split sections`).
# The same Python version and OS image give the same bytes: the script prints the sha256, and
# results/corpus/SHA256 records the one of the reference run.
# Usage: scripts/corpus.sh [OUT]   (default results/corpus/train.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/corpus/train.txt}
mkdir -p "$(dirname "$out")"
python3 - "$out" <<'PY'
import hashlib, os, random, re, sys, platform
import pydoc_data.topics as topics

out = sys.argv[1]

def tidy(text):
    """Strips trailing spaces and collapses runs of blank lines to one, so two blank lines mean a new document."""
    lines = [l.rstrip() for l in text.replace("\r\n", "\n").replace("\f", "\n").split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()

docs = []  # (source, text)
for key in sorted(topics.topics):
    body = tidy(topics.topics[key])
    # Cut at headings: a title line underlined with "=" or "-".
    parts = re.split(r"\n\n(?=[^\n]+\n(?:=+|-+)\n)", body)
    pending = ""
    for i, p in enumerate(parts):
        pending = (pending + "\n\n" + p).strip() if pending else p
        if len(pending) >= 400 or i == len(parts) - 1:
            docs.append((f"python-{platform.python_version()}:pydoc_data.topics[{key!r}]#{i}", pending))
            pending = ""

for name in ["Apache-2.0", "MPL-2.0", "Artistic", "CC0-1.0"]:
    path = f"/usr/share/common-licenses/{name}"
    with open(path, encoding="utf-8") as f:
        docs.append((path, tidy(f.read())))

# The topics overlap (the "for" topic is also a section of "compound"): keep a document only when at most
# 20% of its characters lie in paragraphs already kept, so no text lands on both sides of a split.
seen, kept = set(), []
for src, d in docs:
    paras = [p.strip() for p in d.split("\n\n") if p.strip()]
    dup = sum(len(p) for p in paras if p in seen)
    if dup <= 0.2 * sum(len(p) for p in paras):
        kept.append((src, d))
        seen.update(paras)
docs = kept

random.Random(20231212).shuffle(docs)
text = "\n\n\n".join(d for _, d in docs) + "\n"
tmp = out + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
os.replace(tmp, out)
manifest = os.path.join(os.path.dirname(out), "MANIFEST.tsv")
with open(manifest, "w", encoding="utf-8") as f:
    f.write("doc\tchars\tsource\n")
    for i, (src, d) in enumerate(docs):
        f.write(f"{i}\t{len(d)}\t{src}\n")
sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
print(f"wrote {out}: {len(docs)} documents, {len(text)} characters, sha256 {sha} (python {platform.python_version()})")
print(f"wrote {manifest}")
PY
