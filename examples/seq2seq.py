"""Run the seq2seq example.

    python examples/seq2seq.py [--quick] [--out DIR]

Same as `rnnkern demo seq2seq`; the implementation is
rnnkern/examples/seq2seq.py, inside the package, so that the demo also
runs from an installed rnnkern.
"""

import sys

from rnnkern.examples.seq2seq import main

if __name__ == "__main__":
    main(sys.argv[1:])
