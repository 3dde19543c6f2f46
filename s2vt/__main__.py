import sys

from s2vt.cli.app import main

sys.exit(main())
