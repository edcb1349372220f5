"""Runnable example tasks, each a module with ``main(argv) -> dict`` (``rnnkern demo NAME``).

Every example prints its metrics, saves a PNG plot under ``--out`` and accepts
``--quick`` (a few epochs: what CI and the tests run).
"""

#: example name -> one-line description (the module is rnnkern.examples.<name>)
EXAMPLES = {
    "seeded_continuation": "continue a sequence from 5 seed values, closed loop (LSTM)",
    "sum_sequence": "sum variable-length integer sequences with an identity RNN (and tanh failing)",
    "seq2seq": "next-step prediction of noisy sine waves, then closed-loop generation",
    "seq2one": "read the frequency of a variable-length noisy sine at its last step (GRU)",
    "gradient_accumulation": "per-step BPTT gradient contributions vs untied finite differences",
    "gradient_flow": "||dL/dh_t|| over 100 steps: a tanh RNN's vanishes, an LSTM's carries",
    "char_lm": "a character-level LSTM model of Python's documentation, sampled (vs PyTorch)",
    "speakers": "classify 9 speakers of JapaneseVowels at each row's last step (GRU; sktime)",
    "torch_dropin": "a PyTorch training loop with torch.nn.GRU swapped for rnnkern.torch.GRU",
}
DEFAULT = "seeded_continuation"
