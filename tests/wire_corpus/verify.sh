#!/bin/sh
# verify.sh CORPUS_DIR: decode+re-encode every indexed document with the real upstream types.
set -u
DIR=${1:-$(dirname "$0")}
W=${WIRECHECK:-/tmp/wirecheck-build/target/debug/wirecheck}
python3 - "$DIR" "$W" <<'PY'
import json, subprocess, sys
d, w = sys.argv[1], sys.argv[2]
files = json.load(open(f"{d}/index.json"))["files"]
bad = 0
for name, meta in files.items():
    r = subprocess.run([w, "--verify", meta["rust_type"]], stdin=open(f"{d}/{name}"), capture_output=True, text=True)
    if meta.get("expect") == "decode_error":
        if r.returncode != 1:
            bad += 1
            print(f"FAIL {name}: expected a decode error, got rc={r.returncode}")
        continue
    if r.returncode:
        bad += 1
        print(f"FAIL {name} as {meta['rust_type']}: rc={r.returncode} {r.stderr.strip()}")
print(f"{len(files) - bad} passed, {bad} failed")
sys.exit(1 if bad else 0)
PY
