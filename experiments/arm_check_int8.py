"""The ARM check (export.arm64.check) on a run's int8 file and test split only: ~5 min under qemu,
where `distill bench RUN --target arm64-emulated` also runs fp32 (~17 min).

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/arm_check_int8.py models/default [--qemu-cpu cortex-a53]

Needs `distill assets install arm64-env`. Prints the verdict and writes RUN/onnx/arm64-int8-test.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distill.errors import DistillError
from export import arm64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--qemu-cpu", default="max")
    ap.add_argument("--artifact", default="int8-dynamic")
    a = ap.parse_args()
    folder = a.run / "onnx"
    if not (folder / "export.json").is_file():
        raise SystemExit(f"{folder}/export.json is missing: {a.run} is not an exported run. "
                         f"Run `distill export onnx {a.run}` first.")
    try:
        arts = {k: v for k, v in arm64.export_artifacts(folder).items() if k == a.artifact}
        if not arts:
            raise SystemExit(f"{folder} has no {a.artifact} artifact; export with --quantize dynamic first.")
        res = arm64.check(arts, folder, arm64.read_splits(a.run, ("test",)), qemu_cpu=a.qemu_cpu)
    except DistillError as e:  # missing aarch64 environment, qemu, splits: the message says the fix
        raise SystemExit(str(e)) from None
    out = folder / f"arm64-{a.artifact.split('-')[0]}-test.json"
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(res["verdict"])
    print(f"written to {out}")


if __name__ == "__main__":
    main()
