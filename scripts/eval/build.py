#!/usr/bin/env python3
"""Build the annotated evaluation sources for `bpm` and `key` from packages only (docs/accuracy.md).

Every source lands in ROOT/<source>/ as wav/*.wav (16-bit, 44.1 kHz) plus annotations.csv with the
columns file,bpm,key,genre,origin,split,seconds. An empty bpm or key means the source has no trustworthy
annotation of it, and that file is not scored for it. `split` is `tune` or `test`, fixed by a hash of the
source and file name (split_of), never by looking at the file: the test part is frozen, and
evaluate.py prints only aggregates for it.

    synth      Kiln's own generator (render/src/synth.rs), seed 4242: tempo and key from the generator
    gm         accompaniment songs: MMA (Debian `mma`) plays a chord chart we write, in one of its
               human-written 4/4 groove styles, at a tempo we choose; FluidSynth renders the MIDI with
               one of two General-MIDI soundfonts (FluidR3_GM, TimGM6mb). Tempo and key from the chart.
    projects   the LMMS and Hydrogen demo songs Debian ships (scripts/real_music/lmms_set.py), first
               90 s; tempo from the project files; no key annotation exists
    classical  music21's corpus (PyPI `music21`): Bach chorales and quartet/sonata movements, key from
               the score (its key signature and mode), kept only when the last bass note is that tonic;
               rendered through MIDI by FluidSynth; no tempo annotation (none is written)
    midi       OpenTTD's OpenMSX MIDI songs (Debian `openttd-openmsx`), both soundfonts, first 90 s:
               tempo from the file (constant-tempo files only); key from a key_signature meta event
               only where the file has exactly one and it is not C major (notation programs' default)

    apt-get install mma fluidsynth fluid-soundfont-gm timgm6mb-soundfont openttd-openmsx lmms hydrogen
    pip install music21 mido soundfile
    python3 scripts/eval/build.py ROOT [--only gm,classical] [--n 60]

Rendered audio is derived from GPL/CC material: keep ROOT outside the repository.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
SOUNDFONTS = [Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), Path("/usr/share/sounds/sf2/TimGM6mb.sf2")]
MMA_LIB = Path("/usr/share/mma/lib/stdlib")
RATE = 44100
TUNE_SHARE = 40  # percent of each source in the tuning part
COLUMNS = ["file", "bpm", "key", "genre", "origin", "split", "seconds"]


def digest(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")


def split_of(source: str, file: str) -> str:
    """Tuning or test part, by a hash of the name alone."""
    return "tune" if digest(f"{source}/{file}") % 100 < TUNE_SHARE else "test"


def key_name(tonic: int, minor: bool) -> str:
    return f"{NOTE_NAMES[tonic % 12]} {'minor' if minor else 'major'}"


def write_annotations(directory: Path, source: str, rows: list[dict]) -> None:
    for r in rows:  # renders of one song share its part (`group`), so no song is on both sides
        r["split"] = split_of(source, r.get("group") or r["file"])
    with open(directory / "annotations.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: r["file"]))
    tune = sum(r["split"] == "tune" for r in rows)
    print(f"{source}: {len(rows)} files ({tune} tuning, {len(rows) - tune} test) -> {directory}", file=sys.stderr)


def fluidsynth(midi: Path, wav: Path, soundfont: Path, seconds: float) -> float:
    """Render a MIDI file and keep its first `seconds`; returns the kept length."""
    import soundfile

    subprocess.run(["fluidsynth", "-ni", "-q", "-r", str(RATE), "-g", "0.6", "-F", str(wav), str(soundfont),
                    str(midi)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return trim(wav, seconds)


def trim(wav: Path, seconds: float) -> float:
    """Keep the first `seconds` and drop a silent tail (FluidSynth's reverb runs on after the music)."""
    import soundfile

    audio, sr = soundfile.read(wav, dtype="int16", frames=int(seconds * RATE), always_2d=True)
    loud = np.nonzero(np.abs(audio).max(axis=1) > 32768 * 10 ** (-50 / 20))[0]
    end = min(len(audio), (loud[-1] + sr) if len(loud) else 0)
    soundfile.write(wav, audio[:end], sr, subtype="PCM_16")
    return end / sr


# --- gm: MMA accompaniment songs -----------------------------------------------------------------------

# Chord charts as (semitones above the tonic, chord suffix), one chord a bar: common progressions of
# popular music and jazz, each with the key it is written in. Minor charts use natural-minor chords
# except where the style raises the seventh (V, V7).
MAJOR_CHARTS = [
    [(0, ""), (7, ""), (9, "m"), (5, "")],
    [(0, ""), (5, ""), (7, ""), (0, "")],
    [(0, ""), (9, "m"), (5, ""), (7, "")],
    [(2, "m7"), (7, "7"), (0, "maj7"), (0, "maj7")],
    [(0, "7"), (0, "7"), (0, "7"), (0, "7"), (5, "7"), (5, "7"), (0, "7"), (0, "7"), (7, "7"), (5, "7"),
     (0, "7"), (7, "7")],
    [(0, ""), (5, ""), (9, "m"), (7, "")],
    [(0, ""), (4, "m"), (5, ""), (7, "")],
    [(0, "maj7"), (9, "m7"), (2, "m7"), (7, "7")],
    [(5, ""), (7, ""), (0, ""), (0, "")],
]
MINOR_CHARTS = [
    [(0, "m"), (5, "m"), (7, "7"), (0, "m")],
    [(0, "m"), (8, ""), (3, ""), (10, "")],
    [(0, "m"), (10, ""), (8, ""), (7, "7")],
    [(0, "m"), (5, "m"), (10, ""), (3, ""), (8, ""), (2, "m7b5"), (7, "7"), (0, "m")],
    [(0, "m"), (8, ""), (5, "m"), (7, "")],
    [(2, "m7b5"), (7, "7"), (0, "m7"), (0, "m7")],
    [(0, "m7"), (0, "m7"), (5, "m7"), (5, "m7"), (0, "m7"), (0, "m7"), (7, "7"), (7, "7")],
    [(0, "m"), (10, ""), (0, "m"), (7, "")],
]
# Tempo ranges by groove family (name fragments, first match wins): what each style is played at.
TEMPO_RANGES = [
    (("ballad", "slow", "lullaby", "hymn", "nite", "mellow", "evansish"), (60, 84)),
    (("fastswing", "bebop", "dixie", "bigband", "boggie", "charleston", "fastblues", "quickstep", "jive",
      "50srock", "bluegrass", "ragtime", "westernswing", "twist", "countryswing", "strut"), (140, 200)),
    (("swing", "jazz", "foxtrot", "shuffle", "blues", "softshoe", "showtune", "broadway"), (100, 160)),
    (("bossa", "samba", "salsa", "mambo", "chacha", "rhumba", "merengue", "beguine", "son", "calypso",
      "tango", "bolero", "cuban"), (90, 140)),
    (("trance",), (128, 142)),
    (("",), (88, 150)),
]
SKIP_GROOVE_FILES = {"metronome", "metronome3", "metronome6", "metronome68", "none", "jazz-54", "68swing",
                     "68march", "arpeggio68", "ballad68", "blues68", "ballad128", "blues128", "rock-128"}


def mma_grooves() -> list[tuple[str, str]]:
    """(file stem, groove) for the main grooves of every 4/4 style whose notes do not ask for a doubled
    or dotted-beat tempo (then the notated tempo would not be the beat)."""
    out = []
    for f in sorted(MMA_LIB.glob("*.mma")):
        if f.stem in SKIP_GROOVE_FILES:
            continue
        text = f.read_text(errors="replace")
        low = text.lower()
        if not re.search(r"^\s*time\s+4\b", low, re.M) or re.search(r"^\s*time\s+[0-35-9]", low, re.M) \
                or "waltz" in f.stem or "march" in f.stem or "double the tempo" in low or "double up" in low or "dotted" in low:
            continue
        names = [line.split()[1] for line in text.splitlines()
                 if line.strip().lower().startswith("defgroove") and len(line.split()) > 1]
        main = [n for n in names if not any(x in n.lower() for x in ("intro", "end", "fill", "break", "sus"))]
        if main:
            out.append((f.stem, main[0]))
    return out


def build_gm(root: Path, n: int, seconds: float) -> None:
    if not shutil.which("mma") or not shutil.which("fluidsynth"):
        raise SystemExit("apt-get install mma fluidsynth fluid-soundfont-gm timgm6mb-soundfont")
    out = root / "gm"
    (out / "wav").mkdir(parents=True, exist_ok=True)
    grooves = mma_grooves()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            h = digest(f"gm-{i}")
            stem, groove = grooves[(i * 7 + h % 3) % len(grooves)]
            minor = i % 2 == 1
            tonic = (i * 5 + (h >> 8) % 12) % 12
            charts = MINOR_CHARTS if minor else MAJOR_CHARTS
            chart = charts[(h >> 16) % len(charts)]
            lo, hi = next(r for names, r in TEMPO_RANGES if any(x in stem for x in names))
            bpm = lo + (h >> 24) % (hi - lo + 1)
            bars = int(np.ceil((seconds + 8) * bpm / 240 / len(chart))) * len(chart)
            lines = [f"Tempo {bpm}", f"Groove {groove}"]
            for b in range(bars):
                step, suffix = chart[b % len(chart)]
                lines.append(f"{b + 1} {NOTE_NAMES[(tonic + step) % 12]}{suffix}")
            lines.append(f"{bars + 1} {NOTE_NAMES[tonic]}{'m' if minor else ''}")
            name = f"gm{i:03d}_{stem}"
            mma, midi = Path(tmp) / f"{name}.mma", Path(tmp) / f"{name}.mid"
            mma.write_text("\n".join(lines) + "\n")
            proc = subprocess.run(["mma", "-f", str(midi), str(mma)], capture_output=True, text=True)
            if proc.returncode != 0 or not midi.exists():
                print(f"{name}: mma failed: {proc.stdout[-300:]} {proc.stderr[-300:]}", file=sys.stderr)
                continue
            soundfont = SOUNDFONTS[(h >> 32) % 2]
            wav = out / "wav" / f"{name}.wav"
            kept = fluidsynth(midi, wav, soundfont, seconds)
            rows.append({"file": wav.name, "bpm": f"{bpm:g}", "key": key_name(tonic, minor), "genre": stem,
                         "origin": f"mma {groove}, chart {charts.index(chart)}, {soundfont.stem}",
                         "seconds": f"{kept:.2f}"})
    write_annotations(out, "gm", rows)


# --- classical: music21's corpus ------------------------------------------------------------------------

GM_PROGRAMS = [0, 19, 48, 52, 40, 6]  # piano, church organ, strings, choir aahs, violin, harpsichord


def classical_key(score) -> tuple[int, bool] | None:
    """The key the score states (its first Key, with mode), kept only when the lowest part's last note
    is that tonic: the piece closes on it, so the signature names the key and not a modal final."""
    from music21 import key as m21key

    keys = list(score.recurse().getElementsByClass(m21key.Key))
    if not keys or keys[0].mode not in ("major", "minor"):
        return None
    k = keys[0]
    bass = score.parts[-1].flatten().notes
    if not bass:
        return None
    last = bass[-1]
    pitch = min(last.pitches, key=lambda p: p.midi) if hasattr(last, "pitches") else last.pitch
    if pitch.pitchClass != k.tonic.pitchClass:
        return None
    return k.tonic.pitchClass, k.mode == "minor"


def build_classical(root: Path, n: int, seconds: float, chorales_only: bool = False) -> None:
    import mido
    from music21 import corpus

    out = root / "classical"
    (out / "wav").mkdir(parents=True, exist_ok=True)
    candidates = []
    for composer in ("bach", "beethoven", "mozart", "haydn", "schumann_robert", "schumann_clara", "handel",
                     "corelli", "schubert", "chopin", "joplin"):
        candidates += [p for p in corpus.getComposer(composer) if p.suffix in (".mxl", ".xml", ".musicxml", ".krn")]
    # Bach's chorales would be most of the corpus: a fixed, hashed selection of them, all of the rest.
    chorales = sorted((p for p in candidates if p.parent.name == "bach"), key=lambda p: digest(p.name))
    # Long scores (whole quartets) take minutes each to parse and would only be cut to an excerpt.
    others = [p for p in candidates if p.parent.name != "bach" and p.stat().st_size < 120_000]
    # Alternate a chorale and another work (chorales parse fast, other scores slowly), or with
    # --chorales-only the chorales alone.
    chosen = chorales if chorales_only else [p for pair in zip(chorales, others) for p in pair] + chorales[len(others):]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in chosen:
            if len(rows) >= n:
                break
            name = f"{path.parent.name}_{path.stem}".replace(".", "_")
            try:
                score = corpus.parse(path)
                found = classical_key(score)
                if found is None:
                    continue
                midi = Path(tmp) / f"{name}.mid"
                score.write("midi", fp=str(midi))
            except Exception as exc:  # an unreadable score is skipped, not fatal
                print(f"{name}: {exc!r}", file=sys.stderr)
                continue
            h = digest(name)
            program = GM_PROGRAMS[h % len(GM_PROGRAMS)]
            song = mido.MidiFile(midi)
            for track in song.tracks:
                for msg in track:
                    if msg.type == "program_change":
                        msg.program = program
                channels = {m.channel for m in track if hasattr(m, "channel")}
                for ch in channels:
                    track.insert(0, mido.Message("program_change", channel=ch, program=program, time=0))
            song.save(midi)
            soundfont = SOUNDFONTS[(h >> 8) % 2]
            wav = out / "wav" / f"{name}.wav"
            try:
                kept = fluidsynth(midi, wav, soundfont, seconds)
            except subprocess.CalledProcessError as exc:
                print(f"{name}: {exc}", file=sys.stderr)
                continue
            if kept < 10:
                wav.unlink(missing_ok=True)
                continue
            rows.append({"file": wav.name, "bpm": "", "key": key_name(*found), "genre": path.parent.name,
                         "origin": f"music21 corpus {path.parent.name}/{path.name}, GM program {program}, "
                                   f"{soundfont.stem}", "seconds": f"{kept:.2f}"})
            print(f"{name}: {key_name(*found)} {kept:.0f} s", file=sys.stderr)
    write_annotations(out, "classical", rows)


# --- midi: OpenMSX, with both soundfonts -----------------------------------------------------------------


def build_midi(root: Path, seconds: float) -> None:
    import mido

    out = root / "midi"
    (out / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for path in sorted(Path("/usr/share/games/openttd/baseset/openmsx").glob("*.mid")):
        song = mido.MidiFile(path)
        tempos, keys = set(), set()
        for msg in (m for t in song.tracks for m in t):
            if msg.type == "set_tempo":
                tempos.add(round(mido.tempo2bpm(msg.tempo), 3))
            elif msg.type == "key_signature":
                keys.add(msg.key)
        if len(tempos) > 1:
            continue  # tempo changes: no single annotation
        bpm = min(tempos) if tempos else 120.0
        key = ""
        # C major is what notation programs write when no key was set: not evidence of a key.
        if len(keys) == 1 and next(iter(keys)) != "C":
            k = next(iter(keys))
            minor = k.endswith("m")
            pcs = {**{n: i for i, n in enumerate(NOTE_NAMES)}, "Db": 1, "Eb": 3, "Gb": 6, "Ab": 8, "Bb": 10, "Cb": 11}
            key = key_name(pcs[k.rstrip("m")], minor)
        for soundfont in SOUNDFONTS:
            wav = out / "wav" / f"{path.stem}_{soundfont.stem}.wav"
            kept = fluidsynth(path, wav, soundfont, seconds)
            rows.append({"file": wav.name, "group": path.stem, "bpm": f"{bpm:g}", "key": key, "genre": "openmsx",
                         "origin": f"openttd-openmsx {path.name}, {soundfont.stem}", "seconds": f"{kept:.2f}"})
    write_annotations(out, "midi", rows)


# --- synth and projects: other tools write them; this step only splits them -----------------------------


def adopt(root: Path, source: str, from_dirs: list[Path], key_col: str | None = "key") -> None:
    """Take a set written by the accuracy example or lmms_set.py (annotations.csv with WAVs in `wav/` or
    beside it) into ROOT/<source>/ with this script's columns and split."""
    import soundfile

    out = root / source
    (out / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for from_dir in from_dirs:
        with open(from_dir / "annotations.csv", newline="") as f:
            listed = list(csv.DictReader(f))
        for a in listed:
            if a.get("flags"):
                continue  # lmms_set.py flags tempo automation, silent or mis-timed renders
            src = from_dir / "wav" / a["file"]
            if not src.exists():
                src = from_dir / a["file"]
            dst = out / "wav" / a["file"]
            if not dst.exists():
                shutil.copy(src, dst)
            rows.append({"file": a["file"], "bpm": a.get("bpm", ""), "key": a.get(key_col, "") if key_col else "",
                         "genre": a.get("style") or a.get("source_project", "").split("/")[0],
                         "origin": a.get("progression") or a.get("source_project", ""),
                         "seconds": f"{soundfile.info(dst).duration:.2f}"})
    write_annotations(out, source, rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--only", default="gm,classical,midi", help="comma-separated: gm, classical, midi")
    ap.add_argument("--n", type=int, default=60, help="files per generated source (gm, classical)")
    ap.add_argument("--seconds", type=float, default=75)
    ap.add_argument("--chorales-only", action="store_true", help="classical: Bach chorales only (fast to parse)")
    ap.add_argument("--adopt", nargs="+", metavar="SOURCE DIR",
                    help="split a set written elsewhere: synth (accuracy example --out) or projects (lmms_set.py)")
    args = ap.parse_args()
    if args.adopt:
        source, *from_dirs = args.adopt
        adopt(args.root, source, [Path(d) for d in from_dirs], key_col="key" if source == "synth" else None)
        return 0
    for source in args.only.split(","):
        if source == "gm":
            build_gm(args.root, args.n, args.seconds)
        elif source == "classical":
            build_classical(args.root, args.n, args.seconds, args.chorales_only)
        elif source == "midi":
            build_midi(args.root, 90.0)
        else:
            raise SystemExit(f"unknown source {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
