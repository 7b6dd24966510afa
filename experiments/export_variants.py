"""Size and accuracy of the shipped int8 file under each way of shrinking it, on one run directory.

Each variant is one `distill export onnx RUN --output DIR ...` with the run's own recipe defaults
plus the variant's flags; the table reads each export.json (file size, test accuracy and macro-F1 at
the deployed length, label agreement with the unpruned PyTorch student on validation, the gate).
Accuracy and size only: no timings, so it may run beside other work.

    .venv/bin/python experiments/export_variants.py models/default --out bench/results/export-variants.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "full vocabulary, int8 embeddings (today's default)": [],
    "full vocabulary, int4 embeddings (block 32)": ["--embeddings", "int4"],
    "domain vocabulary, int8 embeddings": ["--vocab", "domain"],
    "domain vocabulary, int4 embeddings (block 32)": ["--vocab", "domain", "--embeddings", "int4"],
    "domain vocabulary top 8000, int4 embeddings (block 32)": ["--vocab", "domain", "--vocab-top-n", "8000",
                                                               "--embeddings", "int4"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/export-variants"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    distill = Path(sys.executable).with_name("distill")
    rows = []
    for i, (name, flags) in enumerate(VARIANTS.items()):
        out = args.work / f"v{i}"
        cmd = [str(distill), "export", "onnx", str(args.run), "--output", str(out), "--force", "--allow-mismatch",
               "--no-e2e", "--no-ort", *flags]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        doc = json.loads((out / "export.json").read_text())
        a = doc["artifacts"]["int8-dynamic"]
        test = a["accuracy"]["test"]
        rows.append({"variant": name, "flags": " ".join(flags) or "(none)", "size_mb": a["size_bytes"] / 1e6,
                     "rows": (doc.get("vocab") or {}).get("kept"), "accuracy": test["accuracy"],
                     "macro_f1": test["macro_f1"], "agreement": a["parity"]["label_agreement"],
                     "gate": a["parity"]["passed"], "max_length": doc["max_length"]})
    base = rows[0]
    lines = [f"# Size of the int8 student: `{args.run}`", "",
             f"`.venv/bin/python experiments/export_variants.py {args.run} --out {args.out}`; test split, "
             f"deployed length {base['max_length']} tokens; agreement = label agreement with the unpruned PyTorch "
             "student on validation (the parity gate needs 99%).", "",
             "| variant | flags | embedding rows | int8 file | test acc | Δ vs today | macro-F1 | agreement | gate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | `{r['flags']}` | {r['rows'] or 'all'} | {r['size_mb']:.2f} MB | "
                     f"{100 * r['accuracy']:.2f}% | {100 * (r['accuracy'] - base['accuracy']):+.2f} | {r['macro_f1']:.4f} | "
                     f"{100 * r['agreement']:.2f}% | {'✓' if r['gate'] else '✗'} |")
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
