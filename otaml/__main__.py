import sys

from otaml.cli import main

sys.exit(main())
