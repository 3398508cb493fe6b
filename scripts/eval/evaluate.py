#!/usr/bin/env python3
"""Score Kiln beside Essentia and librosa on the sources build.py made (docs/accuracy.md).

    # Kiln's answers for every source (writes ROOT/<source>/kiln.csv)
    cargo build --release -p kiln-render --features synth --example accuracy
    python3 scripts/eval/evaluate.py kiln ROOT --bin $CARGO_TARGET_DIR/release/examples/accuracy
    # the peers, once per source (cached in ROOT/<source>/peers.csv; they do not change)
    python3 scripts/eval/evaluate.py peers ROOT
    # scores: the tuning part (per-file misses with --details), or the frozen test part
    python3 scripts/eval/evaluate.py score ROOT --part tune [--details]
    python3 scripts/eval/evaluate.py score ROOT --part test

The test part prints aggregates only, never a file, and every scoring of it is appended to
ROOT/test-runs.log (time, commit, figures), so how often it was looked at is on record.

Peers, all at their defaults: Essentia RhythmExtractor2013 (multifeature and degara) and
PercivalBpmEstimator for tempo; Essentia KeyExtractor with the profiles edma, edmm, bgate, shaath,
temperley and krumhansl for key; librosa feature.tempo and, for key, a mean chroma_cqt correlated with
the Krumhansl-Schmuckler profiles. "Essentia best" is, per source and part, the method or profile that
scores best there: an oracle choice no user could make in advance, so a generous comparison.

Coverage: Kiln's answers ranked by its confidence; "80 %" is the score of the 80 % most confident.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from accuracy_peers import KS_MAJOR, KS_MINOR, Key, bpm_scores, markdown, mirex, parse_key  # noqa: E402

SOURCES = ["synth", "gm", "projects", "classical", "midi"]
TEMPO_METHODS = ["multifeature", "degara", "percival"]
KEY_PROFILES = ["edma", "edmm", "bgate", "shaath", "temperley", "krumhansl"]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sources(root: Path) -> list[str]:
    return [s for s in SOURCES if (root / s / "annotations.csv").exists()]


def run_kiln(args: argparse.Namespace) -> int:
    for source in sources(args.root):
        started = time.monotonic()
        proc = subprocess.run([args.bin, "--wavs", str(args.root / source)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{source}: {proc.stderr.strip()}", file=sys.stderr)
            return 1
        print(f"{source}: {proc.stdout.strip()} [{time.monotonic() - started:.0f} s wall]", file=sys.stderr)
    return 0


def run_peers(args: argparse.Namespace) -> int:
    import essentia
    import essentia.standard as es
    import librosa

    essentia.log.infoActive = False
    essentia.log.warningActive = False
    tempo = {"multifeature": es.RhythmExtractor2013(method="multifeature"),
             "degara": es.RhythmExtractor2013(method="degara"),
             "percival": es.PercivalBpmEstimator(sampleRate=44100)}
    keys = {p: es.KeyExtractor(profileType=p, sampleRate=44100) for p in KEY_PROFILES}
    for source in sources(args.root):
        d = args.root / source
        out_path = d / "peers.csv"
        done = {r["file"]: r for r in read_rows(out_path)} if out_path.exists() else {}
        rows = read_rows(d / "annotations.csv")
        for i, a in enumerate(rows, 1):
            if a["file"] in done:
                continue
            wav = str(d / "wav" / a["file"])
            r: dict = {"file": a["file"], "seconds": a["seconds"]}
            a44 = es.MonoLoader(filename=wav, sampleRate=44100)()
            cpu = time.process_time()
            for name, algo in tempo.items():
                algo.reset()
                t0 = time.process_time()
                out = algo(a44)
                r[f"bpm_{name}"] = f"{float(out if name == 'percival' else out[0]):.2f}"
                r[f"cpu_bpm_{name}"] = f"{time.process_time() - t0:.3f}"
            for name, algo in keys.items():
                algo.reset()
                t0 = time.process_time()
                k, scale, strength = algo(a44)
                r[f"key_{name}"] = f"{k} {scale}"
                r[f"cpu_key_{name}"] = f"{time.process_time() - t0:.3f}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a22, _ = librosa.load(wav, sr=22050, mono=True)
            t0 = time.process_time()
            r["bpm_librosa"] = f"{float(np.atleast_1d(librosa.feature.tempo(y=a22, sr=22050))[0]):.2f}"
            r["cpu_bpm_librosa"] = f"{time.process_time() - t0:.3f}"
            t0 = time.process_time()
            chroma = librosa.feature.chroma_cqt(y=a22, sr=22050).mean(axis=1)
            best = max(((float(np.corrcoef(chroma, np.roll(p, t))[0, 1]), Key(t, m))
                        for t in range(12) for m, p in ((False, KS_MAJOR), (True, KS_MINOR))), key=lambda x: x[0])
            r["key_librosa"] = str(best[1])
            r["cpu_key_librosa"] = f"{time.process_time() - t0:.3f}"
            done[a["file"]] = r
            print(f"{source} [{i}/{len(rows)}] {a['file']} {time.process_time() - cpu:.1f} s CPU", file=sys.stderr)
            with open(out_path, "w", newline="") as f:  # after every file: an interrupted run resumes
                cols = list(r.keys())
                w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
                w.writeheader()
                w.writerows(done.values())
    return 0


def to_float(text) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def tempo_metrics(rows: list[dict], answers: dict[str, float | None]) -> np.ndarray:
    """Acc1, Acc2, within ±0.5 BPM per row (a missing answer misses all three)."""
    return np.array([bpm_scores(float(a["bpm"]), answers.get(a["file"])) for a in rows], dtype=float).reshape(-1, 3)


def key_metrics(rows: list[dict], answers: dict[str, str | None]) -> np.ndarray:
    """exact, MIREX per row."""
    out = []
    for a in rows:
        m = mirex(parse_key(a["key"]), parse_key(answers.get(a["file"])))
        out.append((m == 1.0, m))
    return np.array(out, dtype=float).reshape(-1, 2)


def coverage(values: np.ndarray, confidence: list[float], share: float) -> float:
    """Mean of `values` over the `share` most confident answers."""
    if not len(values):
        return float("nan")
    order = np.argsort(-np.asarray(confidence), kind="stable")
    keep = max(1, int(round(share * len(values))))
    return float(values[order[:keep]].mean())


def score(args: argparse.Namespace) -> int:
    lines = []
    tempo_rows, key_rows = [], []
    for source in sources(args.root):
        d = args.root / source
        rows = [a for a in read_rows(d / "annotations.csv") if a["split"] == args.part]
        kiln = {r["file"]: r for r in read_rows(d / "kiln.csv")} if (d / "kiln.csv").exists() else {}
        peers = {r["file"]: r for r in read_rows(d / "peers.csv")} if (d / "peers.csv").exists() else {}
        t_rows = [a for a in rows if a["bpm"]]
        k_rows = [a for a in rows if a["key"]]
        if t_rows:
            kt = tempo_metrics(t_rows, {f: to_float(r["bpm"]) for f, r in kiln.items()})
            conf = [to_float(kiln.get(a["file"], {}).get("bpm_confidence")) or 0.0 for a in t_rows]
            peer = {m: tempo_metrics(t_rows, {f: to_float(r.get(f"bpm_{m}")) for f, r in peers.items()})
                    for m in TEMPO_METHODS}
            best = max(TEMPO_METHODS, key=lambda m: (peer[m][:, 0].mean(), peer[m][:, 2].mean()))
            lib = tempo_metrics(t_rows, {f: to_float(r.get("bpm_librosa")) for f, r in peers.items()})
            fmt = lambda m: " / ".join(f"{v:.3f}" for v in m.mean(axis=0))
            tempo_rows.append([source, str(len(t_rows)), fmt(kt),
                               f"{coverage(kt[:, 0], conf, 0.8):.3f} / {coverage(kt[:, 0], conf, 0.5):.3f}",
                               f"{fmt(peer[best])} ({best})" if peers else "—", fmt(lib) if peers else "—"])
            if args.details and args.part == "tune":
                for a, m, c in zip(t_rows, kt, conf):
                    if m[2] < 1:
                        r = peers.get(a["file"], {})
                        lines.append(f"tempo {source} {a['file']}: {a['bpm']} -> {kiln.get(a['file'], {}).get('bpm')}"
                                     f" (conf {c:.2f}; {a['genre']}; essentia {r.get('bpm_multifeature')}"
                                     f" / {r.get('bpm_degara')} / {r.get('bpm_percival')})")
        if k_rows:
            kk = key_metrics(k_rows, {f: r["key"] for f, r in kiln.items()})
            conf = [to_float(kiln.get(a["file"], {}).get("key_confidence")) or 0.0 for a in k_rows]
            peer = {p: key_metrics(k_rows, {f: r.get(f"key_{p}") for f, r in peers.items()}) for p in KEY_PROFILES}
            best = max(KEY_PROFILES, key=lambda p: peer[p][:, 1].mean())
            lib = key_metrics(k_rows, {f: r.get("key_librosa") for f, r in peers.items()})
            fmt = lambda m: " / ".join(f"{v:.3f}" for v in m.mean(axis=0))
            key_rows.append([source, str(len(k_rows)), fmt(kk),
                             f"{coverage(kk[:, 1], conf, 0.8):.3f} / {coverage(kk[:, 1], conf, 0.5):.3f}",
                             f"{fmt(peer[best])} ({best})" if peers else "—", fmt(lib) if peers else "—"])
            if args.details and args.part == "tune":
                for a, m, c in zip(k_rows, kk, conf):
                    if m[1] < 1:
                        r = peers.get(a["file"], {})
                        lines.append(f"key {source} {a['file']}: {a['key']} -> {kiln.get(a['file'], {}).get('key')}"
                                     f" (conf {c:.2f}; {a['genre']}; {a['origin']}; shaath {r.get('key_shaath')})")
    out = [f"## {args.part} part ({args.root})", "",
           "Tempo: Acc1 / Acc2 / within ±0.5 BPM; coverage = Kiln's Acc1 of its 80 % / 50 % most confident", "",
           markdown(["source", "n", "Kiln", "Kiln coverage 80/50", "Essentia best", "librosa"], tempo_rows), "",
           "Key: exact / MIREX; coverage = Kiln's MIREX of its 80 % / 50 % most confident", "",
           markdown(["source", "n", "Kiln", "Kiln coverage 80/50", "Essentia best", "librosa (KS)"], key_rows)]
    print("\n".join(out))
    if lines:
        print("\n" + "\n".join(lines))
    if args.part == "test":
        commit = subprocess.run(["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
                                capture_output=True, text=True).stdout.strip()
        with open(args.root / "test-runs.log", "a") as f:
            f.write(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}, "
                    f"note: {args.note or '-'}\n" + "\n".join(out) + "\n\n")
    return 0


def cpu(args: argparse.Namespace) -> int:
    """Peers' CPU seconds per audio minute over every source, per call."""
    totals: dict[str, float] = {}
    minutes = 0.0
    for source in sources(args.root):
        p = args.root / source / "peers.csv"
        if not p.exists():
            continue
        for r in read_rows(p):
            minutes += float(r["seconds"]) / 60
            for k, v in r.items():
                if k.startswith("cpu_"):
                    totals[k[4:]] = totals.get(k[4:], 0.0) + float(v)
    print(f"{minutes:.1f} min of audio")
    for k, v in sorted(totals.items()):
        print(f"{k}: {v / minutes:.3f} s CPU per audio minute")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    k = sub.add_parser("kiln")
    k.add_argument("root", type=Path)
    k.add_argument("--bin", required=True, help="the accuracy example binary (release)")
    p = sub.add_parser("peers")
    p.add_argument("root", type=Path)
    s = sub.add_parser("score")
    s.add_argument("root", type=Path)
    s.add_argument("--part", choices=("tune", "test"), required=True)
    s.add_argument("--details", action="store_true", help="tuning part only: list every miss")
    s.add_argument("--note", help="what changed (recorded in test-runs.log)")
    c = sub.add_parser("cpu")
    c.add_argument("root", type=Path)
    args = ap.parse_args()
    return {"kiln": run_kiln, "peers": run_peers, "score": score, "cpu": cpu}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
