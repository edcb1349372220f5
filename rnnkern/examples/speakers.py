"""Speaker recognition on JapaneseVowels: a GRU classifies 9 speakers at each row's last step.

The data (UCI, Kudo et al. 1999): 9 male speakers saying /ae/, 12 LPC cepstrum
coefficients per frame, 7 to 29 frames per utterance, 270 training and 370 test
utterances. It is read offline from the copy sktime bundles
(``sktime.datasets.load_japanese_vowels``; ``pip install 'rnnkern[data]'``). The
utterances stay at their own length (padded, ``lengths``: no resampling); each
coefficient is standardised with the training set's mean and deviation.
``GRU(12, 64) -> Dense(64, 9)`` is trained with cross-entropy (label smoothing 0.1) at
each row's last true step (``masks.last_step``): Adam, batch 16, 30 epochs, the
learning rate falling linearly from 3e-3 to 3e-4, and fresh Gaussian noise (sd
``NOISE`` in standardised units) added to the training inputs every epoch, the
regulariser that keeps 270 utterances from being memorised. One model per seed;
reported: test accuracy per seed and their mean, the test accuracy after every epoch
(watched, not used to choose anything), and the confusion matrix of the first seed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import rnnkern as rk

from ._common import parser, save_plot

SPEAKERS = 9
NOISE = 0.7


def load(split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """One split of JapaneseVowels -> utterances [(T_b, 12)], speaker ids (B,) in 0..8."""
    try:
        from sktime.datasets import load_japanese_vowels
    except ImportError as e:
        raise ImportError("speakers: the JapaneseVowels data comes from sktime's bundled "
                          "copy; pip install 'rnnkern[data]' (or sktime)") from e
    X, y = load_japanese_vowels(split=split, return_type="nested_univ")
    seqs = [np.stack([np.asarray(X.iloc[i, j], np.float64) for j in range(X.shape[1])], 1)
            for i in range(X.shape[0])]
    return seqs, np.asarray(y).astype(np.int64) - 1


def batch(seqs: list[np.ndarray], labels: np.ndarray, mean: np.ndarray, std: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardised, padded -> x: (T, B, 12), lengths: (B,), target: (T, B) the speaker
    at every step (the mask picks the last), mask: (T, B)."""
    x, lengths = rk.data.from_sequences([(s - mean) / std for s in seqs])
    T = x.shape[0]
    target = np.ascontiguousarray(np.broadcast_to(labels[None, :], (T, len(labels))))
    return x, lengths, target, rk.masks.last_step(T, lengths)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="models trained, seeds seed.. (3)")
    args = p.parse_args(argv)
    train_seqs, train_y = load("train")
    test_seqs, test_y = load("test")
    frames = np.concatenate(train_seqs)
    mean, std = frames.mean(0), frames.std(0)
    x, lengths, target, mask = batch(train_seqs, train_y, mean, std)
    x_te, len_te, t_te, m_te = batch(test_seqs, test_y, mean, std)
    epochs = 3 if args.quick else 30
    seeds = [args.seed] if args.quick else list(range(args.seed, args.seed + args.seeds))
    loss = rk.losses.CrossEntropy(label_smoothing=0.1)

    runs = []
    t0 = time.perf_counter()
    for seed in seeds:
        model = rk.Sequential(rk.GRU(12, 64), rk.Dense(64, SPEAKERS), backend=args.backend,
                              seed=seed)
        opt = rk.Adam(model.parameters(), lr=3e-3, clip_norm=5.0)
        rng = np.random.default_rng(seed)
        history: dict[str, list] = {}
        for epoch in range(epochs):  # one fit per epoch: new noise, a lower rate
            opt.lr = 3e-3 * (1 - 0.9 * epoch / epochs)
            noisy = x + (NOISE * rng.standard_normal(x.shape)).astype(x.dtype)
            h = rk.fit(model, opt, noisy, target, epochs=1, batch_size=16, mask=mask,
                       lengths=lengths, loss=loss, metrics=("accuracy",),
                       validation=(x_te, t_te, m_te, len_te), seed=seed * epochs + epoch,
                       progress=args.progress)
            for k, v in h.items():
                history.setdefault(k, []).extend(v)
        logits = model(x_te, lengths=len_te)[len_te - 1, np.arange(len(len_te))]
        pred = logits.argmax(1)
        runs.append({"seed": seed, "history": history,
                     "accuracy": float((pred == test_y).mean()), "pred": pred})
        print(f"seed {seed}: test accuracy {runs[-1]['accuracy']:.2%}")
    seconds = time.perf_counter() - t0
    acc = [r["accuracy"] for r in runs]
    print(f"mean test accuracy {np.mean(acc):.2%} over {len(runs)} seeds "
          f"(min {min(acc):.2%}), {seconds:.1f} s for all of them")
    confusion = np.zeros((SPEAKERS, SPEAKERS), np.int64)
    np.add.at(confusion, (test_y, runs[0]["pred"]), 1)

    def draw(plt: Any) -> Any:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        a.imshow(confusion, cmap="Blues")
        for i, j in zip(*np.nonzero(confusion)):
            a.text(j, i, confusion[i, j], ha="center", va="center",
                   color="white" if confusion[i, j] > confusion.max() / 2 else "black")
        a.set(title=f"test confusion, seed {runs[0]['seed']} ({acc[0]:.1%})",
              xlabel="predicted speaker", ylabel="true speaker",
              xticks=range(SPEAKERS), yticks=range(SPEAKERS),
              xticklabels=range(1, SPEAKERS + 1), yticklabels=range(1, SPEAKERS + 1))
        for r in runs:
            b.plot(r["history"]["val_accuracy"], label=f"seed {r['seed']}")
        b.set(title="test accuracy at the last true step", xlabel="epoch", ylim=(0.5, 1.0))
        b.legend()
        fig.tight_layout()
        return fig

    return {"runs": runs, "mean_accuracy": float(np.mean(acc)), "seconds": seconds,
            "confusion": confusion, "plot": save_plot(args.out, "speakers", draw)}
