"""Choice lists shared by the recipe schema (distill.recipe, as Literal types) and the CLI's options
(distill.cli, as Typer choices): one list each, in a module light enough for `distill --help`."""

QUANTIZE = ("dynamic", "static", "none")
ISA = ("auto", "avx512_vnni", "avx2", "arm64")
VOCAB = ("full", "domain")
EMBEDDINGS = ("int8", "int4")
