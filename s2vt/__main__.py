import sys

from s2vt.cli.commands import main

sys.exit(main())
