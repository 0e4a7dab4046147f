"""Entry point: ``python proxy.py [--config config.yaml] [--host H] [--port P]`` serves."""

import sys

from cancelproxy.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
