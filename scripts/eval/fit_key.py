#!/usr/bin/env python3
"""Fit what `key` learns from data, on the TUNING parts only (render/src/key.rs cites this).

Reads ROOT/<source>/features.csv, written by `accuracy --wavs ROOT/<source> --features`: per file the
treble (t0..t11), bass (b0..b11), overtone (o0..o11) and opening-bass (s0..s11) chroma of chroma.rs.
This file mirrors key.rs's decision in numpy, so that what it fits is what the Rust code does.

1. Bass profiles: the mean bass chroma (each file's scaled to sum 1), rotated to the annotated tonic, per
   mode; every source weighted equally so that no one genre decides them.
2. Confidence: a logistic regression of "the answer is exactly right" on the best key's lead over the
   runner-up and on whether the opening cue decided it.

    python3 scripts/eval/fit_key.py ROOT            # prints the Rust constants and tuning-part figures
    python3 scripts/eval/fit_key.py ROOT --loso     # bass profiles learned without each source in turn

The test parts are never read.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from accuracy_peers import Key, mirex, parse_key  # noqa: E402

SOURCES = ["synth", "gm", "projects", "classical", "midi"]
MAJOR = np.array([0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400])
MINOR = np.array([0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.330, 0.133])
HAND_BASS = (np.array([1.00, 0.05, 0.20, 0.05, 0.25, 0.55, 0.05, 0.60, 0.05, 0.40, 0.05, 0.10]),
             np.array([1.00, 0.05, 0.15, 0.35, 0.05, 0.55, 0.05, 0.55, 0.40, 0.05, 0.35, 0.05]))
BASS_WEIGHT = 0.25
RELATIVE_MARGIN = 0.3


def load(root: Path, part: str = "tune"):
    out = []
    for source in SOURCES:
        ann, feat = root / source / "annotations.csv", root / source / "features.csv"
        if not ann.exists() or not feat.exists():
            continue
        with open(ann, newline="") as f:
            annotations = {a["file"]: a for a in csv.DictReader(f)}
        with open(feat, newline="") as f:
            for r in csv.DictReader(f):
                a = annotations.get(r["file"])
                if not a or a["split"] != part or not a["key"]:
                    continue
                v = {p: np.array([float(r[f"{p}{i}"]) for i in range(12)]) for p in "tbos"}
                out.append((source, r["file"], v, parse_key(a["key"])))
    return out


def corr(c: np.ndarray, p: np.ndarray, tonic: int) -> float:
    return float(np.corrcoef(c, np.roll(p, tonic))[0, 1]) if c.std() > 0 else 0.0


def decide(v: dict, bass: tuple) -> tuple[Key, float, bool]:
    """key.rs's estimate: (key, lead over the runner-up, decided by the opening cue)."""
    full = v["t"] + v["b"] + v["o"]
    scores = {}
    for t in range(12):
        for minor, (p, q) in ((False, (MAJOR, bass[0])), (True, (MINOR, bass[1]))):
            scores[(t, minor)] = corr(full, p, t) + BASS_WEIGHT * corr(v["b"], q, t)
    ranked = sorted(scores, key=lambda k: -scores[k])
    best = ranked[0]
    lead = scores[best] - scores[ranked[1]]
    rel = ((best[0] + 3) % 12, False) if best[1] else ((best[0] + 9) % 12, True)
    cued = scores[best] - scores[rel] < RELATIVE_MARGIN and v["s"][rel[0]] > v["s"][best[0]]
    return Key(*(rel if cued else best)), lead, cued


def learn_bass(data) -> tuple[np.ndarray, np.ndarray]:
    sources = sorted({d[0] for d in data})
    profiles = []
    for minor in (False, True):
        per_source = []
        for s in sources:
            rows = [np.roll(v["b"] / max(v["b"].sum(), 1e-12), -k.tonic) for src, _, v, k in data
                    if src == s and k.minor == minor]
            if rows:
                per_source.append(np.mean(rows, axis=0))
        p = np.mean(per_source, axis=0)
        profiles.append(p / p.max())
    return profiles[0], profiles[1]


def score(data, bass) -> dict[str, float]:
    out: dict[str, list] = {}
    for source, _, v, ref in data:
        out.setdefault(source, []).append(mirex(ref, decide(v, bass)[0]))
    return {s: round(float(np.mean(m)), 3) for s, m in out.items()}


def fit_confidence(data, bass) -> np.ndarray:
    x = np.array([[1.0, lead, float(cued)] for _, _, v, _ in data for _, lead, cued in [decide(v, bass)]])
    y = np.array([float(decide(v, bass)[0] == ref) for _, _, v, ref in data])
    w = np.zeros(3)
    for _ in range(20000):
        p = 1 / (1 + np.exp(-x @ w))
        w -= 0.5 * (x.T @ (p - y) / len(y) + 1e-3 * np.r_[0, w[1:]])
    return w


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--loso", action="store_true")
    args = ap.parse_args()
    data = load(args.root)
    sources = sorted({d[0] for d in data})
    print(f"{len(data)} key-annotated tuning files: " + ", ".join(f"{s} {sum(d[0] == s for d in data)}" for s in sources))
    print("hand-set bass profiles, MIREX:", score(data, HAND_BASS))
    if args.loso:
        for held in sources:
            bass = learn_bass([d for d in data if d[0] != held])
            print(f"held out {held}: MIREX {score([d for d in data if d[0] == held], bass)[held]}")
        return 0
    bass = learn_bass(data)
    print("learned bass profiles, MIREX:", score(data, bass))
    w = fit_confidence(data, bass)
    fmt = lambda p: ", ".join(f"{x:.3f}" for x in p)
    print(f"const BASS_MAJOR: [f64; 12] = [{fmt(bass[0])}];")
    print(f"const BASS_MINOR: [f64; 12] = [{fmt(bass[1])}];")
    print(f"const CONFIDENCE: [f64; 3] = [{fmt(w)}];")
    return 0


if __name__ == "__main__":
    sys.exit(main())
