import sys

from dyno.cli import main

sys.exit(main())
