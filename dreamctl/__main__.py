"""`python -m dreamctl`: what torchrun and `--nproc` start in each rank."""

from dreamctl.cli import main

main()
