"""Run the char_lm example.

    python examples/char_lm.py [--quick] [--out DIR]

Same as `rnnkern demo char_lm`; the implementation is
rnnkern/examples/char_lm.py, inside the package, so that the demo also
runs from an installed rnnkern.
"""

import sys

from rnnkern.examples.char_lm import main

if __name__ == "__main__":
    main(sys.argv[1:])
