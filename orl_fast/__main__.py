import sys

from orl_fast.cli import main

sys.exit(main())
