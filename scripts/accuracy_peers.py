#!/usr/bin/env python3
"""Run peer BPM and key detectors on Kiln's annotated synthetic set, and compare them with Kiln.

The renderer's accuracy example writes the set as 16-bit WAVs plus two CSV files:

    cargo run --release -p kiln-render --features synth --example accuracy -- --out DIR

    DIR/annotations.csv   file,bpm,key,style,progression,tuning_hz      (the truth)
    DIR/kiln.csv          file,bpm,key,bpm_confidence,key_confidence,tuning_hz   (Kiln's detections)

This script runs the peers on the very same files:

    Essentia   RhythmExtractor2013(method="multifeature") for BPM, KeyExtractor(profileType="edma") for key
    Essentia   PercivalBpmEstimator (BPM only: a cheap estimator, for the CPU comparison)
    librosa    librosa.feature.tempo for BPM; for key, a time-averaged chroma_cqt correlated with the
               Krumhansl-Schmuckler profiles (librosa has no key estimator of its own)

and prints a markdown table with the same metrics as the Rust example: BPM Accuracy1 (within 4 %),
Accuracy2 (within 4 % of ref x 1, 2, 1/2, 3 or 1/3), the share within +-0.5 BPM, key exact, the MIREX
weighted key score (also over tonal loops only), and CPU seconds per minute of audio.

Usage:

    pip install essentia librosa soundfile "numba==0.61.2" "numpy<2.3"
    python3 scripts/accuracy_peers.py DIR [--jobs 1] [--limit N] [--csv-out DIR/peers.csv] [--kiln-cpu S]

Essentia (AGPL-3.0) and librosa are test-time oracles only: they are never dependencies of Kiln's
product code, and nothing in the product links, vendors or ships them.

CPU time is time.process_time() around each peer call on one file (all threads of the process),
after the audio is loaded and resampled, so decoding is excluded. Each worker warms every peer up on a
few seconds of noise first, so one-off costs (lazy imports, JIT, filter banks) are not charged to the
first file. Kiln's CPU figure is not in kiln.csv: pass the accuracy example's "analysis CPU" number
with --kiln-cpu to show it (that one is wall clock on one thread, Analysis::new + tempo + key).

A file that fails for one tool counts as a miss for that tool; failures are listed on stderr.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 44100  # Essentia's RhythmExtractor2013 requires 44.1 kHz.
LIBROSA_RATE = 22050  # librosa's default analysis rate.

NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
PITCH_CLASS = {
    **{name: i for i, name in enumerate(NOTE_NAMES)},
    **{"Db": 1, "Eb": 3, "Gb": 6, "Ab": 8, "Bb": 10, "Cb": 11, "Fb": 4, "E#": 5, "B#": 0},
}

# Krumhansl & Kessler (1982) probe-tone profiles, tonic first.
KS_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KS_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

BPM_MULTIPLES = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)

# (tool id, table label, what its bpm and key CPU columns time).
TOOLS = [
    ("kiln", "Kiln", None, None),
    (
        "essentia",
        "Essentia (RhythmExtractor2013 multifeature + KeyExtractor edma)",
        "RhythmExtractor2013",
        "KeyExtractor",
    ),
    ("percival", "Essentia Percival (bpm only)", "PercivalBpmEstimator", None),
    ("librosa", "librosa (feature.tempo + chroma_cqt/Krumhansl-Schmuckler)", "feature.tempo", "chroma_cqt + KS"),
]


# --- keys and metrics (the same definitions as render/examples/accuracy.rs) -----------------------


@dataclass(frozen=True)
class Key:
    tonic: int  # pitch class, C = 0
    minor: bool

    def __str__(self) -> str:
        return f"{NOTE_NAMES[self.tonic]} {'minor' if self.minor else 'major'}"


def parse_key(text: str | None) -> Key | None:
    """Parse `A minor`, `F# major`, `Bb minor` or `Am`; flats become sharps. None if unparsable."""
    if not text:
        return None
    parts = text.strip().split()
    if len(parts) == 1:  # "Am", "F#m", "C"
        name, mode = (parts[0][:-1], "minor") if parts[0].endswith("m") else (parts[0], "major")
    elif len(parts) == 2:
        name, mode = parts
    else:
        return None
    name = name[:1].upper() + name[1:]
    if name not in PITCH_CLASS or mode.lower() not in ("major", "minor", "maj", "min"):
        return None
    return Key(PITCH_CLASS[name], mode.lower().startswith("min"))


def mirex(reference: Key, estimate: Key | None) -> float:
    """MIREX key score: 1 exact, 0.5 fifth (same mode), 0.3 relative, 0.2 parallel, else 0."""
    if estimate is None:
        return 0.0
    r, e = reference.tonic, estimate.tonic
    if reference == estimate:
        return 1.0
    if reference.minor == estimate.minor and (e - r) % 12 in (5, 7):
        return 0.5
    if not reference.minor and estimate.minor and (r - e) % 12 == 3:
        return 0.3
    if reference.minor and not estimate.minor and (e - r) % 12 == 3:
        return 0.3
    if r == e:
        return 0.2
    return 0.0


def bpm_scores(reference: float, estimate: float | None) -> tuple[bool, bool, bool]:
    """(Accuracy1, Accuracy2, within +-0.5 BPM); a missing estimate misses all three."""
    if estimate is None or not np.isfinite(estimate):
        return False, False, False
    err = abs(estimate - reference)
    acc1 = err <= 0.04 * reference
    acc2 = any(abs(estimate - m * reference) <= 0.04 * m * reference for m in BPM_MULTIPLES)
    return acc1, acc2, err <= 0.5


# --- peers ------------------------------------------------------------------------------------------

_peers: dict | None = None  # per process, built by init_worker()


def init_worker() -> None:
    """Import the peers, build their algorithms once, and warm them up (not timed)."""
    global _peers
    import essentia
    import essentia.standard as es
    import librosa

    essentia.log.infoActive = False
    essentia.log.warningActive = False
    _peers = {
        "es": es,
        "librosa": librosa,
        "rhythm": es.RhythmExtractor2013(method="multifeature"),
        "key": es.KeyExtractor(profileType="edma", sampleRate=SAMPLE_RATE),
        "percival": es.PercivalBpmEstimator(sampleRate=SAMPLE_RATE),
    }
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(SAMPLE_RATE * 4) * 0.1).astype(np.float32)
    for name, call in peer_calls(noise, noise[::2].copy()):
        try:
            call()
        except Exception as exc:  # a broken peer shows up per file; do not die here
            print(f"warm-up of {name} failed: {exc}", file=sys.stderr)


def librosa_key(y: np.ndarray, sr: int) -> tuple[str, float]:
    """Key from librosa the standard way, since librosa has no key estimator: a chroma_cqt averaged
    over time, correlated (Pearson) with the 24 rotated Krumhansl-Schmuckler major/minor profiles."""
    chroma = _peers["librosa"].feature.chroma_cqt(y=y, sr=sr).mean(axis=1)
    best = (-2.0, Key(0, False))
    for tonic in range(12):
        for minor, profile in ((False, KS_MAJOR), (True, KS_MINOR)):
            r = float(np.corrcoef(chroma, np.roll(profile, tonic))[0, 1])
            if r > best[0]:
                best = (r, Key(tonic, minor))
    return str(best[1]), best[0]


def peer_calls(audio44: np.ndarray | None, audio22: np.ndarray | None):
    """(name, thunk) for every timed peer call; a None input skips that library's calls."""
    p = _peers

    def essentia(name: str, audio: np.ndarray):
        # Reset first: a reused PercivalBpmEstimator (a wrapped streaming network) otherwise returns
        # the first file's BPM for every later file, in microseconds. Resetting costs nothing.
        p[name].reset()
        return p[name](audio)

    calls = []
    if audio44 is not None:
        calls += [
            ("essentia_bpm", lambda: float(essentia("rhythm", audio44)[0])),
            ("essentia_key", lambda: essentia("key", audio44)),
            ("percival_bpm", lambda: float(essentia("percival", audio44))),
        ]
    if audio22 is not None:
        calls += [
            ("librosa_bpm", lambda: float(np.atleast_1d(p["librosa"].feature.tempo(y=audio22, sr=LIBROSA_RATE))[0])),
            ("librosa_key", lambda: librosa_key(audio22, LIBROSA_RATE)),
        ]
    return calls


def analyse(path: str) -> dict:
    """Run every peer on one file. Returns detections, CPU seconds per call, and errors."""
    out: dict = {"file": Path(path).name, "errors": {}, "cpu": {}}
    try:
        import soundfile

        out["seconds"] = soundfile.info(path).duration
    except Exception as exc:
        out["seconds"] = None
        out["errors"]["duration"] = repr(exc)

    audio44 = audio22 = None
    try:
        audio44 = _peers["es"].MonoLoader(filename=path, sampleRate=SAMPLE_RATE)()
        if audio44.size == 0:
            raise ValueError("no samples")
    except Exception as exc:
        audio44 = None
        for name in ("essentia_bpm", "essentia_key", "percival_bpm"):
            out["errors"][name] = f"load: {exc!r}"
    try:
        with warnings.catch_warnings():  # its audioread fallback warns before it fails too
            warnings.simplefilter("ignore")
            audio22, _ = _peers["librosa"].load(path, sr=LIBROSA_RATE, mono=True)
        if audio22.size == 0:
            raise ValueError("no samples")
    except Exception as exc:
        audio22 = None
        for name in ("librosa_bpm", "librosa_key"):
            out["errors"][name] = f"load: {exc!r}"

    for name, call in peer_calls(audio44, audio22):
        started = time.process_time()
        try:
            result = call()
        except Exception as exc:
            out["errors"][name] = repr(exc)
            continue
        out["cpu"][name] = time.process_time() - started
        if name == "essentia_key":
            key, scale, strength = result
            out[name], out["essentia_key_strength"] = f"{key} {scale}", float(strength)
        elif name == "librosa_key":
            out[name], out["librosa_key_r"] = result
        else:
            out[name] = result
    return out


# --- input, output ----------------------------------------------------------------------------------


def read_csv(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def to_float(text: str | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def run_peers(paths: list[str], jobs: int) -> list[dict]:
    results = []
    started = time.monotonic()

    def progress(i: int, r: dict) -> None:
        failed = f"  FAILED: {', '.join(sorted(r['errors']))}" if r["errors"] else ""
        print(f"[{i}/{len(paths)}] {r['file']}  {time.monotonic() - started:.0f} s{failed}", file=sys.stderr)

    if jobs <= 1:
        init_worker()
        for i, path in enumerate(paths, 1):
            results.append(analyse(path))
            progress(i, results[-1])
    else:
        with multiprocessing.Pool(jobs, initializer=init_worker) as pool:
            for i, r in enumerate(pool.imap(analyse, paths, chunksize=1), 1):
                results.append(r)
                progress(i, r)
    return results


def load_results(path: Path) -> list[dict]:
    """Peer results from an earlier run's --csv-out, so Kiln can be re-measured without re-running
    the peers (about 9 CPU s per minute of audio for all of them)."""
    results = []
    for row in read_csv(path).values():
        r: dict = {"file": row["file"], "seconds": to_float(row.get("seconds")), "errors": {}, "cpu": {}}
        for call in ("essentia_bpm", "percival_bpm", "librosa_bpm"):
            r[call] = to_float(row.get(call))
        for call in ("essentia_key", "librosa_key"):
            r[call] = row.get(call) or None
        for call in ("essentia_bpm", "essentia_key", "percival_bpm", "librosa_bpm", "librosa_key"):
            if (cpu := to_float(row.get(f"cpu_{call}"))) is not None:
                r["cpu"][call] = cpu
        if row.get("errors"):
            r["errors"]["earlier run"] = row["errors"]
        results.append(r)
    return results


def summarise(annotations: list[dict], detections: dict[str, dict], cpu: dict[str, tuple]) -> list[list[str]]:
    """One table row per tool. detections[tool][file] = (bpm, key); cpu[tool] = (bpm, key) s/min."""
    n = max(len(annotations), 1)
    tonal = [a for a in annotations if a["progression"].startswith("Tonal")]
    rows = []
    for tool, label, bpm_timed, key_timed in TOOLS:
        acc1 = acc2 = half = exact = 0
        score = tonal_score = 0.0
        has_key = tool != "percival"
        for a in annotations:
            bpm, key = detections[tool].get(a["file"], (None, None))
            ok1, ok2, ok_half = bpm_scores(float(a["bpm"]), bpm)
            acc1, acc2, half = acc1 + ok1, acc2 + ok2, half + ok_half
            m = mirex(parse_key(a["key"]), parse_key(key))
            exact += m == 1.0
            score += m
            if a["progression"].startswith("Tonal"):
                tonal_score += m
        bpm_cpu, key_cpu = cpu.get(tool, (None, None))
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
        rows.append([
            label,
            f"{acc1 / n:.3f}",
            f"{acc2 / n:.3f}",
            f"{half / n:.3f}",
            f"{exact / n:.3f}" if has_key else "—",
            f"{score / n:.3f}" if has_key else "—",
            f"{tonal_score / len(tonal):.3f}" if has_key and tonal else "—",
            # Kiln's --kiln-cpu figure covers analysis, tempo and key together.
            f"{bpm_cpu:.3f} (bpm+key)" if tool == "kiln" and bpm_cpu is not None else fmt(bpm_cpu),
            "incl." if tool == "kiln" and bpm_cpu is not None else fmt(key_cpu) if has_key else "—",
        ])
    return rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="folder with the WAVs, annotations.csv and kiln.csv")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--limit", type=int, help="only the first N files of annotations.csv")
    ap.add_argument("--csv-out", type=Path, help="write every tool's per-file detections here")
    ap.add_argument("--kiln-cpu", type=float, help="Kiln's CPU s per minute of audio, from the accuracy example")
    ap.add_argument("--reuse", type=Path, help="take the peers' results from an earlier --csv-out instead of running them")
    args = ap.parse_args()

    annotations = list(read_csv(args.dir / "annotations.csv").values())[: args.limit]
    kiln_path = args.dir / "kiln.csv"
    kiln = read_csv(kiln_path) if kiln_path.exists() else {}
    if not kiln:
        print(f"warning: no {kiln_path}; Kiln's row counts every file as a miss", file=sys.stderr)

    if args.reuse:
        wanted = {a["file"] for a in annotations}
        results = [r for r in load_results(args.reuse) if r["file"] in wanted]
    else:
        results = run_peers([str(args.dir / a["file"]) for a in annotations], args.jobs)
    by_file = {r["file"]: r for r in results}

    detections = {
        "kiln": {f: (to_float(row.get("bpm")), row.get("key")) for f, row in kiln.items()},
        "essentia": {f: (r.get("essentia_bpm"), r.get("essentia_key")) for f, r in by_file.items()},
        "percival": {f: (r.get("percival_bpm"), None) for f, r in by_file.items()},
        "librosa": {f: (r.get("librosa_bpm"), r.get("librosa_key")) for f, r in by_file.items()},
    }

    def per_minute(call: str) -> float | None:
        timed = [r for r in results if call in r["cpu"] and r.get("seconds")]
        minutes = sum(r["seconds"] for r in timed) / 60.0
        return sum(r["cpu"][call] for r in timed) / minutes if minutes > 0 else None

    cpu = {
        "kiln": (args.kiln_cpu, None),
        "essentia": (per_minute("essentia_bpm"), per_minute("essentia_key")),
        "percival": (per_minute("percival_bpm"), None),
        "librosa": (per_minute("librosa_bpm"), per_minute("librosa_key")),
    }

    failures = [(r["file"], call, err) for r in results for call, err in sorted(r["errors"].items())]
    missing_kiln = [a["file"] for a in annotations if a["file"] not in kiln]
    if failures or missing_kiln:
        print(f"\n{len(failures)} peer failure(s), each counted as a miss:", file=sys.stderr)
        for file, call, err in failures:
            print(f"  {file}  {call}: {err}", file=sys.stderr)
        if missing_kiln:
            print(f"  not in kiln.csv (miss for Kiln): {', '.join(missing_kiln)}", file=sys.stderr)

    if args.csv_out:
        columns = [
            "file", "ref_bpm", "ref_key", "progression", "seconds",
            "kiln_bpm", "kiln_key",
            "essentia_bpm", "essentia_key", "essentia_key_strength", "percival_bpm",
            "librosa_bpm", "librosa_key", "librosa_key_r",
            "cpu_essentia_bpm", "cpu_essentia_key", "cpu_percival_bpm", "cpu_librosa_bpm", "cpu_librosa_key",
            "errors",
        ]
        with open(args.csv_out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for a in annotations:
                r = by_file.get(a["file"], {"cpu": {}, "errors": {}})
                k = kiln.get(a["file"], {})
                row = {c: r.get(c) for c in columns}
                row.update({f"cpu_{c}": f"{s:.4f}" for c, s in r["cpu"].items()})
                for c in ("essentia_bpm", "percival_bpm", "librosa_bpm"):
                    if row[c] is not None:
                        row[c] = f"{row[c]:.2f}"
                for c in ("essentia_key_strength", "librosa_key_r"):
                    if row[c] is not None:
                        row[c] = f"{row[c]:.3f}"
                row.update({
                    "file": a["file"], "ref_bpm": a["bpm"], "ref_key": a["key"], "progression": a["progression"],
                    "seconds": f"{r['seconds']:.2f}" if r.get("seconds") else None,
                    "kiln_bpm": k.get("bpm"), "kiln_key": k.get("key"),
                    "errors": "; ".join(f"{c}: {e}" for c, e in sorted(r["errors"].items())) or None,
                })
                w.writerow(row)
        print(f"wrote {args.csv_out}", file=sys.stderr)

    minutes = sum(r["seconds"] for r in results if r.get("seconds")) / 60.0
    header = [
        "tool", "BPM Acc1", "BPM Acc2", "within ±0.5 BPM", "key exact", "key MIREX",
        f"key MIREX tonal ({sum(a['progression'].startswith('Tonal') for a in annotations)})",
        "CPU s/min bpm", "CPU s/min key",
    ]
    print(f"{len(annotations)} files, {minutes:.1f} min of audio ({args.dir})\n")
    print(markdown(header, summarise(annotations, detections, cpu)))
    timed = "; ".join(f"{label.split(' (')[0]}: bpm = {b}" + (f", key = {k}" if k else "")
                      for _, label, b, k in TOOLS if b)
    print(
        "\nCPU: time.process_time() (all threads) around each peer call per file, audio already decoded "
        f"and resampled, after a warm-up; summed and divided by the minutes of audio timed. {timed}. "
        + ("Kiln: from --kiln-cpu (accuracy example, wall clock, 1 thread, Analysis::new + tempo + key)."
           if args.kiln_cpu is not None else "Kiln: n/a (pass --kiln-cpu with the accuracy example's figure).")
        + " A failed file counts as a miss."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
