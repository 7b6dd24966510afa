"""`python -m distill.cli` (how torchrun and accelerate launch start a run)."""

from distill.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
