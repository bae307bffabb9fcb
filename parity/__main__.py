import sys

from parity.tools.cli import main

sys.exit(main())
