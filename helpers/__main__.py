"""`python -m helpers …`: see helpers/cli.py."""
import sys

from .cli import main
from .distributed import finish

code = main()
finish()            # under accelerate launch: every process ends together, the process group closed
sys.exit(code)
