"""The README's results table from one benched run: every artifact the bench measured, with its
accuracy and macro-F1 at the deployed length, its file size, p50 latency on real test texts (one at a
time, batch 1) per target, and p50 of the fixed batch-1 row at the deployed length on the last target.

    .venv/bin/python experiments/readme_table.py models/default           # after distill run, export, bench

Reads models/NAME/bench/results.json only, so the figures are the bench's, as `distill bench` wrote them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional


def _p50(rows: list[dict[str, Any]], key: str, target: str, inputs: str) -> Optional[float]:
    for r in rows:
        if (r["artifact"] == key and r["target"] == target and r["inputs"] == inputs and r.get("batch", 1) == 1
                and r.get("status") == "ok"):
            return r["latency_ms"]["p50"]
    return None


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3g}" if v < 100 else f"{v:.0f}"


def table(results: dict[str, Any]) -> str:
    rows, targets = results["rows"], [t["name"] for t in results["config"]["targets"]]
    length = results["config"].get("deployed_length") or (results["config"]["seq"] or [None])[0]
    last = targets[-1]
    head = ["artifact", "test acc", "macro-F1", "file", *(f"texts `{t}`" for t in targets), f"1 x {length} `{last}`"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in results["artifacts"]:
        acc = a.get("accuracy") or {}
        cells = [a["label"], f"{100 * acc['accuracy']:.2f}%" if acc.get("accuracy") is not None else "-",
                 f"{acc['macro_f1']:.3f}" if acc.get("macro_f1") is not None else "-",
                 f"{a['size_bytes'] / 1e6:.1f} MB" if a.get("size_bytes") and a.get("runtime") != "tfidf" else "",
                 *(_ms(_p50(rows, a["key"], t, "texts")) for t in targets),
                 _ms(_p50(rows, a["key"], last, "synthetic"))]
        out.append("| " + " | ".join(cells) + " |")
    host = results["host"]
    out.append("")
    out.append(f"p50 in ms; {host['cpu_model']}, {host['logical_cores']} logical cores, "
               f"{', '.join(host['isa']) or 'no SIMD extensions'}; bench of {results['created'][:10]}.")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a benched run directory (models/NAME)")
    a = ap.parse_args()
    path = a.run / "bench" / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path}: {e.strerror if isinstance(e, OSError) else 'not valid JSON'}. Pass a run "
                         f"directory that `distill bench` has measured (models/NAME), or run `distill bench {a.run}` "
                         "first.") from None
    print(table(results), end="")


if __name__ == "__main__":
    main()
