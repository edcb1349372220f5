"""Run the sum_sequence example.

    python examples/sum_sequence.py [--quick] [--out DIR]

Same as `rnnkern demo sum_sequence`; the implementation is
rnnkern/examples/sum_sequence.py, inside the package, so that the demo also
runs from an installed rnnkern.
"""

import sys

from rnnkern.examples.sum_sequence import main

if __name__ == "__main__":
    main(sys.argv[1:])
