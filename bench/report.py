"""results.json (versioned schema), report.md and a self-contained report.html (PNGs embedded)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

SCHEMA = 1


def _fmt_acc(a: dict | None) -> str:  # noqa: D103
    return f"{100 * a['accuracy']:.1f}%" if a and a.get("accuracy") is not None else "–"


def _fmt_size(n: int | None) -> str:
    return f"{n / 1e6:.1f} MB" if n else "–"


def _ms(x: float) -> str:
    """Three significant figures: 0.0612, 5.64, 21.1, 164."""
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


REFERENCES = ("teacher-optimum-int8", "teacher-pytorch", "student-pytorch")  # speed-ups are against the first present


def reference_key(results: dict) -> str | None:
    """What speed-ups compare with: the teacher as a user would ship it (optimum int8) when measured."""
    keys = {a["key"] for a in results["artifacts"]}
    return next((k for k in REFERENCES if k in keys), None)


def shape(r: dict) -> str:
    if r.get("inputs") == "texts":
        tok = r.get("tokens") or {}
        return f"{r.get('texts', '?')} texts, p50 {tok['p50']:.0f} tok" if tok else f"{r.get('texts', '?')} texts"
    return f"{r['batch']} x {r['seq']}"


def _same_shape(a: dict, b: dict) -> bool:
    return a["target"] == b["target"] and a.get("inputs", "synthetic") == b.get("inputs", "synthetic") and \
        a["batch"] == b["batch"] and a["seq"] == b["seq"]


def _speedups(results: dict) -> dict[tuple, float]:
    """p50 of the reference row (reference_key) / p50 of each row, same target and shape."""
    ref_key = reference_key(results)
    out = {}
    for r in results["rows"]:
        if r["status"] != "ok" or ref_key is None:
            continue
        ref = next((x for x in results["rows"] if x["artifact"] == ref_key and _same_shape(x, r) and x["status"] == "ok"), None)
        if ref:
            out[id(r)] = ref["latency_ms"]["p50"] / r["latency_ms"]["p50"]
    return out


def _fmt_f1(a: dict | None) -> str:
    return f"{a['macro_f1']:.3f}" if a and a.get("macro_f1") is not None else "–"


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows shared by report.md and report.html."""
    labels = {a["key"]: a for a in results["artifacts"]}
    speed = _speedups(results)
    ref = {"teacher-optimum-int8": "teacher int8", "teacher-pytorch": "teacher PyTorch",
           "student-pytorch": "student PyTorch"}.get(reference_key(results) or "", "–")
    head = ["artifact", "target", "batch x input", "p50 ms", "p90 ms", "mean ± std ms", "items/s", f"x vs {ref}",
            "accuracy", "macro-F1", "size", "load s", "1st run ms", "memory +MB", "MMACs", "% of peak", "note"]
    rows = []
    for r in results["rows"]:
        a = labels[r["artifact"]]
        if r["status"] != "ok":
            rows.append([a["label"], r["target"], shape(r)] + ["–"] * 13 + [f"failed: {r.get('error', '')[:80]}"])
            continue
        lat = r["latency_ms"]
        s = speed.get(id(r))
        hw = r.get("hardware") or {}
        macs = (r.get("macs") or {}).get("total")
        rows.append([a["label"], r["target"], shape(r), _ms(lat["p50"]), _ms(lat["p90"]),
                     f"{_ms(lat['mean'])} ± {_ms(lat['std'])}", f"{r['throughput_per_s']:.1f}",
                     f"{s:.1f}x" if s else "–", _fmt_acc(a["accuracy"]), _fmt_f1(a["accuracy"]), _fmt_size(a["size_bytes"]),
                     f"{r['load_s']:.2f}" if "first_run_ms" in r else "–", _ms(r["first_run_ms"]) if "first_run_ms" in r else "–",
                     f"{r['memory_growth_mb']:.0f}" if "memory_growth_mb" in r else "–",
                     f"{macs / 1e6:.0f}" if macs else "–",
                     f"{100 * hw['fraction']:.0f}%" if hw.get("fraction") is not None else "–",
                     "noisy" if r.get("noisy") else ""])
    return head, rows


def peak_lines(results: dict) -> list[str]:
    return [f"`{t}`: int8 {p['int8_gops']:.0f} GOP/s, fp32 {p['fp32_gflops']:.0f} GFLOP/s at {p['threads']} thread(s) "
            f"({p.get('method', 'ONNX Runtime MatMulInteger / MatMul')})" for t, p in (results.get("peaks") or {}).items()]


def host_lines(results: dict) -> list[str]:
    h = results["host"]
    v = h["versions"]
    lines = [f"CPU: {h['cpu_model']} ({h['arch']}), {h['logical_cores']} logical cores"
             f"{'' if h.get('physical_cores') is None else ', ' + str(h['physical_cores']) + ' physical'}, "
             f"usable by this process: {h['usable_cores']}",
             f"Instruction sets: {', '.join(h['isa']) or 'none detected'} (int8 preset: {h['quantization_preset']})",
             f"Software: Python {h['python']}, {h['os']}; " + ", ".join(f"{k} {val}" for k, val in v.items())]
    return lines


def target_lines(results: dict) -> list[str]:
    out = []
    for t in results["config"]["targets"]:
        if t.get("qemu_cpu"):
            out.append(f"`{t['name']}`: {t['description']} (ARM section)")
            continue
        kind = "emulated on this host" if t["emulated"] else "this host"
        out.append(f"`{t['name']}`: cores {t['cores']}, {t['threads']} thread(s), spinning "
                   f"{'on' if t['spin'] else 'off'} ({kind}) — {t['description']}")
    return out


def arm64_sections(results: dict) -> list[dict[str, Any]]:
    """Per ARM target: title, verdict sentence, and the agreement table (head, rows) or the error."""
    from export.arm64 import TABLE_HEAD, table

    labels = {a["key"]: a["label"] for a in results["artifacts"]}
    out = []
    for c in results.get("arm64") or []:
        if "error" in c:
            out.append({"title": f"{c['target']} (QEMU_CPU={c['qemu_cpu']})", "verdict": f"The check failed: {c['error']}",
                        "head": [], "rows": [], "about": ""})
            continue
        hw = ", ".join(k for k, on in (c["arm"].get("hwcaps") or {}).items() if on) or "none of dotprod/i8mm/SVE"
        out.append({"title": f"{c['target']} (QEMU_CPU={c['qemu_cpu']}: {c['profile']})", "verdict": c["verdict"],
                    "head": TABLE_HEAD, "rows": table(c, labels),
                    "about": f"aarch64 onnxruntime {c['arm']['onnxruntime']} (Python {c['arm']['python']}; CPU features "
                             f"seen: {hw}) against x86 onnxruntime {c['host']['onnxruntime']} here, both with graph "
                             f"optimization {c['graph_optimization_level']}, {c['threads']} thread(s), the same token "
                             f"ids (batches of {c['batch_size']}, sorted by length, up to {c['max_length']} tokens). "
                             f"Check wall time {c['wall_s']:.0f} s. {c['note']}"})
    return out


def about(results: dict) -> str:
    cfg = results["config"]
    text = (f"Each row ran in its own fresh process, pinned to the target's cores. Fixed rows (batch x tokens): "
            f"{cfg['warmup']} warm-up and {cfg['iterations']} timed iterations on {cfg['inputs']}.")
    if cfg.get("texts"):
        text += f" Text rows (1 x text): {cfg['texts_inputs']}; p50 / p90 over the texts."
    if cfg.get("deployed_length"):
        text += (f" Deployed length: {cfg['deployed_length']} tokens (the export's max_length, written into its "
                 "tokenizer files); every accuracy is computed at each artifact's deployed length.")
    text += (" Load s: session creation; 1st run: the first inference after it; memory +MB: the process's resident "
             "memory growth from before loading to after the first inference.")
    return text


def write_json(results: dict, out: Path) -> Path:
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return out


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(results: dict, out: Path, plots: list[Path]) -> Path:
    head, rows = table_rows(results)
    cfg = results["config"]
    parts = [f"# Benchmark: {results['source']['path']}", "",
             f"{results['created']} · edge-distill {results['version']} · results.json schema {results['schema']}", "",
             "## Machine", ""] + [f"- {x}" for x in host_lines(results)] + ["", "## Targets", ""]
    parts += [f"- {x}" for x in target_lines(results)] + [""]
    parts += [f"> {results['emulation_note']}", "", "## Latency and accuracy", "", about(results), "",
              _md_table(head, rows), ""]
    if results.get("peaks"):
        parts += ["Matrix-multiply peak of this host per target (the `% of peak` column: the time the row's MACs "
                  "would take at these rates, over its p50; memory traffic, layer norms, softmax, GELU, quantize / "
                  "dequantize and per-call overhead are what a low figure points at):", ""]
        parts += [f"- {x}" for x in peak_lines(results)] + [""]
    for sec in arm64_sections(results):
        parts += [f"## ARM (aarch64, emulated): {sec['title']}", "", f"**{sec['verdict']}**", ""]
        if sec["rows"]:
            parts += [_md_table(sec["head"], sec["rows"]), "", sec["about"], ""]
    if results["warnings"]:
        parts += ["## Warnings", ""] + [f"- {w}" for w in results["warnings"]] + [""]
    parts += ["## Artifacts", "", _md_table(["artifact", "runtime", "file", "size", "accuracy", "accuracy from"],
                                             [[a["label"], a["runtime"], f"`{a['path']}`", _fmt_size(a["size_bytes"]),
                                               _fmt_acc(a["accuracy"]), a["accuracy_source"] or "not available"]
                                              for a in results["artifacts"]]), ""]
    if results["notes"]:
        parts += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    out.write_text("\n".join(parts))
    return out


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:first-child,th:first-child,td:nth-child(2){text-align:left}th{background:#f2f2f2}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:.5em 1em}.noisy{color:#b00}img{max-width:100%}"""


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td{' class=noisy' if c == 'noisy' else ''}>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def write_html(results: dict, out: Path, plots: list[Path]) -> Path:
    """One file, no external references: every image is a data: URI."""
    head, rows = table_rows(results)
    e = html.escape
    imgs = "".join(f'<h3>{e(p.stem.replace("_", " "))}</h3><img alt="{e(p.stem)}" '
                   f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in plots)
    li = lambda xs: "<ul>" + "".join(f"<li>{e(x)}</li>" for x in xs) + "</ul>"  # noqa: E731
    art = _html_table(["artifact", "runtime", "file", "size", "accuracy", "accuracy from"],
                      [[a["label"], a["runtime"], a["path"], _fmt_size(a["size_bytes"]), _fmt_acc(a["accuracy"]),
                        a["accuracy_source"] or "not available"] for a in results["artifacts"]])
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>Benchmark: {e(results['source']['path'])}</title>
<style>{_CSS}</style></head><body>
<h1>Benchmark: {e(results['source']['path'])}</h1>
<p>{e(results['created'])} · edge-distill {e(str(results['version']))} · results.json schema {results['schema']}</p>
<h2>Machine</h2>{li(host_lines(results))}
<h2>Targets</h2>{li(target_lines(results))}
<p class="note">{e(results['emulation_note'])}</p>
<h2>Latency and accuracy</h2>
<p>{e(about(results))}</p>
{_html_table(head, rows)}
{('<p>Matrix-multiply peak of this host per target (the % of peak column):</p>' + li(peak_lines(results))) if results.get('peaks') else ''}
{''.join(f"<h2>ARM (aarch64, emulated): {e(sec['title'])}</h2><p><b>{e(sec['verdict'])}</b></p>"
         + (_html_table(sec['head'], sec['rows']) + f"<p>{e(sec['about'])}</p>" if sec['rows'] else '')
         for sec in arm64_sections(results))}
{'<h2>Warnings</h2>' + li(results['warnings']) if results['warnings'] else ''}
<h2>Artifacts</h2>{art}
{'<h2>Notes</h2>' + li(results['notes']) if results['notes'] else ''}
<h2>Plots</h2>{imgs}
</body></html>
"""
    out.write_text(doc, encoding="utf-8")
    return out


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Compact rows for a CLI table: artifact, target, p50, p90, accuracy, size."""
    arts = {a["key"]: a for a in results["artifacts"]}
    return [{"artifact": arts[r["artifact"]]["label"], "target": r["target"], "batch": r["batch"], "seq": r["seq"],
             "shape": shape(r), "p50": r.get("latency_ms", {}).get("p50"), "p90": r.get("latency_ms", {}).get("p90"),
             "accuracy": (arts[r["artifact"]]["accuracy"] or {}).get("accuracy"),
             "macro_f1": (arts[r["artifact"]]["accuracy"] or {}).get("macro_f1"),
             "size_bytes": arts[r["artifact"]]["size_bytes"], "status": r["status"], "noisy": r.get("noisy", False)}
            for r in results["rows"]]
