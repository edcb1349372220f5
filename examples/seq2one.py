"""Run the seq2one example.

    python examples/seq2one.py [--quick] [--out DIR]

Same as `rnnkern demo seq2one`; the implementation is
rnnkern/examples/seq2one.py, inside the package, so that the demo also
runs from an installed rnnkern.
"""

import sys

from rnnkern.examples.seq2one import main

if __name__ == "__main__":
    main(sys.argv[1:])
