"""`python -m lmforge ...` (and `torchrun -m lmforge pretrain ...`): the same commands as the `lmforge` script."""

from lmforge.cli import main

if __name__ == "__main__":
    main()
