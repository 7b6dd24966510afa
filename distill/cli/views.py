"""Everything the `distill` commands print beyond a line: tables, summaries and reports.

Each function takes the data a command computed and the Console to print on; none of them computes
anything. rich.table (and export.arm64's row formatting) is imported inside the function that needs it,
so that importing distill.cli stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from rich.console import Console


def print_stage(console: Console, stage: str, event: str) -> None:
    """One line of `distill run`'s stage progress."""
    mark = {"start": "[cyan]…[/]", "done": "[green]✓[/]", "reused": "[green]✓[/] (reused)",
            "not-built": "[yellow]–[/] not built yet"}[event]
    console.print(f"  {stage:<12} {mark}")


def print_summary(console: Console, run_dir: Path, s: dict) -> None:
    """The results table of distill.summary.run_summary(run_dir), then the report and .ort paths."""
    from rich.table import Table

    if not s["rows"]:
        console.print(f"{run_dir}: no results yet (run `distill run` first).")
        return
    table = Table(title=f"{run_dir}: test split ({s['test_n']} examples, split seed {s['split_seed']}); "
                        f"p50 = {s['latency']} (distill bench)")
    for col in ("model", "acc", "F1", "params", "MB", "p50 ms"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)

    def fmt(v: Any, spec: str, suffix: str = "") -> str:
        return "-" if v is None else f"{v:{spec}}{suffix}"

    for name, r in s["rows"].items():
        table.add_row(name + (" [red](parity ✗)[/]" if r.get("status") == "failed" else ""),
                      fmt(r.get("accuracy"), ".4f"), fmt(r.get("macro_f1"), ".4f"),
                      fmt(r["parameters"] / 1e6 if r.get("parameters") else None, ".1f", "M"),
                      fmt(r.get("size_mb"), ".1f"), fmt(r.get("p50_ms"), ".2f"))
    console.print(table)
    if s.get("stale_export"):
        console.print(f"[yellow]![/] onnx/ was exported from an earlier student: the run has retrained it since, so the "
                      f"int8 rows (and the bench's) describe that older model. Rerun `distill export onnx {run_dir}` "
                      f"and `distill bench {run_dir}`.", highlight=False)
    if s.get("stale_bench"):
        console.print(f"[yellow]![/] bench/ timed earlier files of {', '.join(s['stale_bench'])}: rebuilt since, so the "
                      f"p50 column describes the models it replaced. Rerun `distill bench {run_dir}`.", highlight=False)
    if s.get("stages"):
        console.print("  stages   " + stage_costs_line(s["stages"]), highlight=False)
    for label, path in s["paths"].items():
        console.print(f"  {label:<8} {path}")


def stage_costs_line(stages: dict) -> str:
    """'data 4 s · teacher 6.1 min, peak 1,210 MiB · ...': wall time, and peak RSS where recorded
    (marked 'process peak' where the platform could not reset the mark per stage)."""
    parts = []
    for name, c in stages.items():
        wall = c["wall_s"]
        part = f"{name} {wall:.0f} s" if wall < 90 else f"{name} {wall / 60:.1f} min"
        if c.get("peak_rss_mib") is not None:
            kind = "peak" if c.get("peak_rss_scope") == "stage" else "process peak"
            part += f", {kind} {c['peak_rss_mib']:,} MiB"
        parts.append(part)
    return " · ".join(parts)


def print_advice(console: Console, run_dir: Path, advice: Iterable[Any]) -> None:
    """distill.advice.advise's items, each with the rerun command that tries it."""
    for a in advice:
        console.print(("[yellow]![/] " if a.level == "warn" else "[cyan]i[/] ") + a.text, highlight=False)
        if a.try_:
            again = f"distill run {run_dir / 'recipe.yaml'} --resume --models-dir {run_dir.parent} --name {run_dir.name}"
            console.print(f"    try: {again} {a.try_}", highlight=False, soft_wrap=True)


def print_arm64(console: Console, check: dict) -> None:
    """One ARM check (export.arm64): agreement with this host per artifact and split, and the verdict."""
    from rich.table import Table

    from export.arm64 import table

    t = Table(title=f"ARM check{' ' + check['target'] if 'target' in check else ''} (QEMU_CPU={check['qemu_cpu']}, graph "
                    f"optimization {check['graph_optimization_level']}); emulated seconds are not a speed")
    for col in ("artifact", "split", "n", "agree w/ x86", "max |Δ logit|", "identical", "ARM acc", "x86 acc", "emulated s"):
        t.add_column(col, justify="left" if col in ("artifact", "split") else "right", no_wrap=col in ("artifact", "split"))
    for row in table(check):
        t.add_row(*row)
    console.print(t)
    console.print(("[green]✓[/] " if check["passed"] else "[red]✗[/] ") + check["verdict"], highlight=False)


def print_causal_lm_export(console: Console, m: dict) -> None:
    """export.causal_lm.export_run's manifest: one line per artifact, greedy generation against PyTorch."""
    for key, a in m["artifacts"].items():
        g = a["greedy"]
        ok = g["matched"] == g["n"]
        console.print(f"{'[green]✓' if ok else '[yellow]!'}[/] {key:<13} {a['size_bytes'] / 1e6:8.1f} MB  greedy generation = "
                      f"PyTorch on {g['matched']}/{g['n']} prompts, next-token agreement "
                      f"{g['teacher_forced']['argmax_agreement']:.3f}", highlight=False)


def print_export(console: Console, res: Any) -> None:
    """export.api.export_onnx's result: gate lines, the artifacts table, the deployed shape, the ARM check."""
    from rich.table import Table

    for line in res.lines:
        console.print(("[green]" if line.startswith("✓") else "[red]") + line + "[/]", highlight=False)
    table = Table(title=f"ONNX export -> {res.output}")
    for col in ("artifact", "size", "parity", "test accuracy"):
        table.add_column(col)
    for key, a in res.artifacts.items():
        p = a["parity"]
        check = f"{p['max_abs_diff']:.1e} max diff" if p["criterion"] == "max_abs_diff" else f"{p['label_agreement']:.1%} agree"
        acc = a["accuracy"].get("test")
        table.add_row(a["file"], f"{a['size_bytes'] / 1e6:.2f} MB", ("[green]✓[/] " if p["passed"] else "[red]✗[/] ") + check,
                      f"{acc['accuracy']:.1%} (F1 {acc['macro_f1']:.3f})" if acc else "-")
    console.print(table)
    v = res.manifest.get("vocab") or {}
    console.print(f"deployed length {res.manifest.get('max_length')} tokens (tokenizer files and every accuracy above); "
                  + (f"vocabulary pruned to {v['kept']:,} of {v['original']:,} rows" if v.get("mode") == "domain"
                     else "full vocabulary")
                  + ("; word embeddings in 4 bits" if (res.manifest.get("embeddings") or {}).get("bits") == 4 else ""),
                  highlight=False)
    if res.arm64:
        print_arm64(console, res.arm64)


def print_bench(console: Console, path: Path, res: Any) -> None:
    """bench.api.run_bench's result: the latency/accuracy table, ARM checks and the report files."""
    from rich.table import Table

    table = Table(title=f"distill bench {path}")
    for col in ("artifact", "target", "input", "p50 ms", "p90 ms", "accuracy", "macro-F1", "size"):
        table.add_column(col, no_wrap=col != "artifact", justify="left" if col in ("artifact", "target") else "right")
    for r in res.rows:
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        table.add_row(r["artifact"], r["target"], r["shape"],
                      "[red]failed[/]" if r["status"] != "ok" else fmt(r["p50"]) + (" [yellow]noisy[/]" if r["noisy"] else ""),
                      fmt(r["p90"]), "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%",
                      "-" if r["macro_f1"] is None else f"{r['macro_f1']:.3f}", f"{r['size_bytes'] / 1e6:.1f} MB")
    if res.rows:
        console.print(table)
    for check in res.results.get("arm64", []):
        if "error" in check:
            console.print(f"[red]✗[/] ARM check on {check['target']} failed: {check['error']}", highlight=False)
        else:
            print_arm64(console, check)
    for kind in ("md", "html", "json"):
        console.print(f"{kind:>4}: {res.files[kind]}")


def print_tune(console: Console, res: Any, goal: str) -> None:
    """distill.tune.tune's result: one row per trial, notes, plots and the best recipe."""
    from rich.table import Table

    table = Table(title=f"{res.study_name}: {len(res.trials)} trials ({res.new_trials} new), {goal} validation accuracy")
    for col in ("#", "state", "params", "validation", "wall"):
        table.add_column(col, justify="right" if col in ("#", "validation", "wall") else "left")
    for t in res.trials:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        if t["validation_accuracy"] is not None:
            val = f"{t['validation_accuracy']:.4f}" + (" [green]best[/]" if t["number"] == res.best_trial else "")
        elif t["intermediate"]:
            val = f"[dim]{list(t['intermediate'].values())[-1]:.4f} at eval {list(t['intermediate'])[-1]}[/]"
        else:
            val = "-"
        table.add_row(str(t["number"]), t["state"] + (" (defaults)" if t.get("baseline") else ""), params, val, "-" if t["wall_s"] is None else f"{t['wall_s']:.1f} s")
    console.print(table)
    for note in res.notes:
        console.print(f"[yellow]note:[/] {note}")
    for kind, path in res.plots.items():
        console.print(f"  {kind:<10} {path}")
    console.print(f"best recipe: {res.best_recipe}   (run it: distill run {res.best_recipe})")


def print_data_inspect(console: Console, rep: dict) -> None:
    """distill.data.inspect.inspect's report: class counts per split, cleaning, carve-outs, token lengths."""
    from rich.table import Table

    names = rep["labels"]
    table = Table(title=f"{rep['source']}: {rep['rows_read']} rows read, {rep['rows_kept']} kept "
                        f"(split seed {rep['split_seed']}{', grouped by ' + rep['group_by'] if rep['group_by'] else ''})")
    table.add_column("split")
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("rows", justify="right")
    for split, s in rep["splits"].items():
        total = max(s["rows"], 1)
        table.add_row(split, *[f"{s['by_class'][n]} ({s['by_class'][n] / total:.0%})" for n in names], str(s["rows"]))
    table.add_row("transfer", *["" for _ in names], str(rep["transfer"]["rows"]))
    if rep["augmented"]:
        table.add_row("augmented", *["" for _ in names], str(rep["augmented"]))
    console.print(table)
    cleaning = Table(title="Cleaning")
    cleaning.add_column("what")
    cleaning.add_column("reason")
    cleaning.add_column("rows", justify="right")
    for kind in ("dropped", "changed"):
        for reason, n in rep[kind].items():
            cleaning.add_row(kind, reason.replace("_", " "), str(n))
    console.print(cleaning)
    for name in ("validation", "test"):
        c = rep.get(f"{name}_carved")
        if c:
            console.print(f"{name}: {c['rows']} rows carved from the given train rows ({c['fraction']:.0%}"
                          f"{', stratified by label' if c['stratified'] else ''}{', whole groups' if c['grouped'] else ''}); "
                          f"give data.{name} to use your own", highlight=False)
    kept = {k: v for k, v in (rep.get("test_kept_as_given") or {}).items() if k != "note" and v}
    if kept:
        console.print("given test split kept as given (reported, not dropped): "
                      + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in kept.items()), highlight=False)
    if rep.get("ignored_files"):
        console.print(f"files not recognised as a split and ignored: {', '.join(rep['ignored_files'])}", highlight=False)
    if rep.get("groups_straddling"):
        console.print(f"groups in more than one split: {rep['groups_straddling']}")
    if rep.get("few_shot"):
        console.print(f"few-shot: {rep['few_shot']}")
    tl = rep.get("token_lengths")
    if tl:
        console.print("token lengths (" + tl["tokenizer"] + "): " + ", ".join(f"{k} {v}" for k, v in tl.items() if k != "tokenizer"))
    if rep["conflicting_texts"]:
        console.print(f"[yellow]{rep['conflicting_texts']} texts had conflicting labels and were dropped, e.g.:[/]")
        for c in rep["conflicting_labels"][:5]:
            console.print(f"  {c['labels']}: {c['text'][:80]!r}", highlight=False)


def print_assets(console: Console, rows: Iterable[tuple[Any, str, int]], env_name: str, env: dict,
                 env_description: str, stale: Iterable[tuple[Path, int]]) -> None:
    """`distill assets list`: (asset, state, size) rows, the arm64 environment's status and stale builds."""
    from rich.table import Table

    table = Table(title="Assets (offline, from hash-pinned PyPI carriers)")
    table.add_column("reference", no_wrap=True)
    table.add_column("status")
    table.add_column("size", no_wrap=True)
    table.add_column("what")
    for a, state, size in rows:
        colour = "green" if state == "installed" else "yellow"
        table.add_row(a.ref, f"[{colour}]{state}[/]", f"{size / 1e6:.1f} MB" if size else "-", a.description)
    table.add_row(env_name, f"[{'green' if env['state'] == 'built' else 'yellow'}]{env['state']}[/]",
                  f"{env['size_bytes'] / 1e6:.0f} MB" if env["size_bytes"] else "-", env_description)
    console.print(table)
    console.print(f"{env_name}: {env['path']}", highlight=False, soft_wrap=True)
    for old, size_bytes in stale:
        size = size_bytes / 1e6
        console.print(f"[yellow]stale:[/] {old} ({size:.0f} MB) was built for other pins and is unused; delete it to free "
                      "the space.", highlight=False, soft_wrap=True)
    console.print("Install one with: distill assets install NAME")


def print_lm_bench(console: Console, path: Path, res: dict) -> None:
    """bench.causal_lm.bench_lm's results: its markdown table (the view of the causal-LM task's bench)."""
    from bench.causal_lm import report_md

    console.print(report_md(res), highlight=False)
