#!/usr/bin/env python3
"""A tempo-annotated set of REAL, human-composed music: the demo songs Debian's LMMS packages ship.

Debian's `lmms-common` installs the demo projects of LMMS (`/usr/share/lmms/projects/{demos,shorties}`)
made by LMMS users, most of them electronic dance music. A project file is XML (`.mmp`, or `.mmpz`: Qt's
qCompress, a 4-byte big-endian length then zlib) whose `<head>` holds the song's tempo (`bpm`) and time
signature. LMMS renders a project headless (`lmms --allowroot render P -f wav -o OUT`), at exactly that
tempo, so the tempo written in the project is an authoritative annotation: it is the grid the notes sit
on, not a listener's guess. (It is the *notated* tempo: a reggae riddim notated at 180 BPM may be felt
at 90. Accuracy2 forgives that octave; Accuracy1 and +-0.5 BPM do not.)

Two steps:

    apt-get install lmms lmms-common      # Debian bookworm: 1.2.2+dfsg1-6
    pip install essentia librosa soundfile "numba==0.61.2" "numpy<2.3"

    # 1. read every project's tempo, render it to WAV, write DIR/annotations.csv
    python3 scripts/real_music/lmms_set.py render /tmp/lmms-real

    # 2. Kiln and the peers on the same WAVs; prints the summary table and the per-track table
    python3 scripts/real_music/lmms_set.py score /tmp/lmms-real --kiln /path/to/kiln

    # Hydrogen's drum-machine demo songs (apt-get install hydrogen), the same way
    python3 scripts/real_music/lmms_set.py render /tmp/h2real --source hydrogen
    # OpenTTD's OpenMSX MIDI songs played by FluidSynth (apt-get install openttd-openmsx fluidsynth
    # fluid-soundfont-gm; pip install mido): not dance music, the "other music" check
    python3 scripts/real_music/lmms_set.py render /tmp/msx --source openmsx
    # Excerpts of a rendered set (here the first 90 s), then score them
    python3 scripts/real_music/lmms_set.py excerpt /tmp/lmms-real /tmp/lmms-real-90 --seconds 90

Results and what they mean: docs/real-music.md.

`render` writes DIR/wav/<project>.wav (16-bit, 44.1 kHz, stereo, the whole song unless --seconds caps
it) and DIR/annotations.csv with the columns file,bpm,source_project,notes (plus timesig, seconds,
rms_dbfs, flags). A project is flagged, and left out of the scores unless --include-flagged, if its
tempo is automated or driven by a controller (its `<head>` then stores `bpm` as an element with an id
that an automation pattern or controller connection refers to), if its render is silent, or if the
render's length does not match the arrangement's length at the annotated tempo (`length-mismatch`:
the check that the renderer really played at that tempo). LMMS renders are deterministic
(byte-identical across runs); Hydrogen's humanised timing is random, so its renders vary slightly.

`score` runs `kiln analyze --format csv` on the WAVs (DIR/kiln.csv), then the peers, all at their
defaults, BPM only (no key annotation exists for these songs, so no key is scored):

    Essentia   RhythmExtractor2013(method="multifeature")
    Essentia   PercivalBpmEstimator
    librosa    feature.tempo

(DIR/peers.csv; --reuse takes it from an earlier run), and prints BPM Accuracy1 (within 4 %),
Accuracy2 (within 4 % of 1, 2, 1/2, 3 or 1/3 times the annotation) and the share within +-0.5 BPM, the
definitions of docs/accuracy.md and scripts/accuracy_peers.py (imported from there).

Essentia (AGPL-3.0) and librosa are test-time oracles only, never dependencies of Kiln's product. The
rendered audio is derived from the demo projects (GPL-2+, Artistic-2, BSD-2-clause, CC-BY-SA-3/4
according to Debian's copyright file): keep it under /tmp, never commit it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable
import csv
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path
import xml.etree.ElementTree as ET

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from accuracy_peers import LIBROSA_RATE, SAMPLE_RATE, bpm_scores, markdown  # noqa: E402

PROJECT_ROOTS = [Path("/usr/share/lmms/projects")]
# Sub-folders of the projects folder that hold songs; "tutorials" holds feature demos, "templates" none.
SONG_FOLDERS = ("demos", "shorties")
SILENT_DBFS = -60.0


# --- reading a project -----------------------------------------------------------------------------


def read_project(path: Path) -> ET.Element:
    data = path.read_bytes()
    if path.suffix == ".mmpz":
        data = zlib.decompress(data[4:])  # qCompress: 4-byte big-endian length, then a zlib stream
    return ET.fromstring(data)


def project_info(path: Path) -> dict:
    """Tempo, time signature and anything that makes the head tempo untrustworthy."""
    root = read_project(path)
    head = root.find("head")
    if head is None:
        raise ValueError("no <head>")
    flags, notes = [], []

    def head_value(name: str) -> tuple[str | None, str | None]:
        """(value, model id): an attribute when plain, an element with an id when automated/controlled."""
        if name in head.attrib:
            return head.get(name), None
        el = head.find(name)
        return (el.get("value"), el.get("id")) if el is not None else (None, None)

    bpm, bpm_id = head_value("bpm")
    num, _ = head_value("timesig_numerator")
    den, _ = head_value("timesig_denominator")
    if bpm is None:
        raise ValueError("no tempo in <head>")
    if bpm_id is not None:
        automated = {o.get("id") for o in root.iter("object")}  # automation patterns' targets
        el = head.find("bpm")
        if bpm_id in automated:
            flags.append("tempo-automation")
        if el is not None and el.find("connection") is not None:
            flags.append("tempo-controller")
    num = num or "4"
    den = den or "4"
    if (num, den) != ("4", "4"):
        notes.append(f"time signature {num}/{den} in the project")
    # Audio clips on sample tracks play at their own speed: the song tempo does not stretch them.
    sample_tracks = sum(1 for t in root.iter("track") if t.get("type") == "2")
    if sample_tracks:
        notes.append(f"{sample_tracks} sample track(s) with audio clips")
    instruments = sorted({i.get("name") for i in root.iter("instrument") if i.get("name")})
    # Length of the arrangement on the song editor's grid (48 ticks a beat): a render at the head
    # tempo lasts this long plus the rest of the last bar and the release tail.
    end = 0
    song = root.find("song/trackcontainer")
    # LMMS counts automation clips in the song's length too.
    for track in song.findall("track") if song is not None else []:
        for clip in track:
            if clip.get("pos") and clip.get("len"):
                end = max(end, int(clip.get("pos")) + int(clip.get("len")))
    return {
        "grid_seconds": end / 48 * 60 / float(bpm),
        "bpm": float(bpm),
        "timesig": f"{num}/{den}",
        "flags": flags,
        "notes": notes,
        "instruments": instruments,
        "creator": f"{root.get('creator', '')} {root.get('creatorversion', '')}".strip(),
    }


def hydrogen_info(path: Path) -> dict:
    """Hydrogen songs: tempo in <bpm>; a non-empty <BPMTimeLine> means tempo changes."""
    root = ET.parse(path).getroot()
    flags, notes = [], []
    timeline = root.find("BPMTimeLine")
    if timeline is not None and len(timeline):
        flags.append("tempo-timeline")
    swing = float(root.findtext("swing_factor") or 0)
    humanize = float(root.findtext("humanize_time") or 0)
    if swing:
        notes.append(f"swing {swing:g}")
    if humanize:
        notes.append(f"humanised timing {humanize:g}")
    notes.append(f"drums only: {root.findtext('name')} by {root.findtext('author')}")
    # Song length on the grid (48 ticks a beat): the longest pattern of each column of the song.
    sizes = {pt.findtext("name"): int(pt.findtext("size")) for pt in root.iter("pattern")}
    ticks = sum(max([sizes.get(i.text, 0) for i in g.findall("patternID")] or [0])
                for g in root.findall("patternSequence/group"))
    bpm = float(root.findtext("bpm"))
    return {"bpm": bpm, "grid_seconds": ticks / 48 * 60 / bpm, "timesig": "4/4", "flags": flags, "notes": notes,
            "instruments": [], "creator": "hydrogen"}


HYDROGEN_SONGS = Path("/usr/share/hydrogen/data/demo_songs")
OPENMSX_SONGS = Path("/usr/share/games/openttd/baseset/openmsx")
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")


def midi_info(path: Path) -> dict:
    """A standard MIDI file: its tempo from the set_tempo events (120 BPM when there is none, as the
    MIDI standard says); more than one distinct tempo means tempo changes, flagged and left out."""
    import mido

    song = mido.MidiFile(path)
    tempos, signatures = set(), set()
    for track in song.tracks:
        for msg in track:
            if msg.type == "set_tempo":
                tempos.add(round(mido.tempo2bpm(msg.tempo), 3))
            elif msg.type == "time_signature":
                signatures.add(f"{msg.numerator}/{msg.denominator}")
    flags, notes = [], []
    if len(tempos) > 1:
        flags.append("tempo-changes")
    if not tempos:
        notes.append("no tempo event: 120 BPM by the MIDI standard")
    if len(signatures) > 1:
        notes.append("time signatures " + " ".join(sorted(signatures)))
    bpm = min(tempos) if tempos else 120.0
    last_note, now = 0.0, 0.0
    for msg in song:  # merged tracks, times in seconds at the file's tempo map
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            last_note = now
    timesig = sorted(signatures)[0] if len(signatures) == 1 else ("4/4" if not signatures else "mixed")
    return {"bpm": bpm, "grid_seconds": song.length, "last_note_seconds": last_note, "timesig": timesig,
            "flags": flags, "notes": notes, "instruments": [], "creator": "midi"}


def find_projects(source: str = "lmms") -> list[Path]:
    if source == "hydrogen":
        return sorted(HYDROGEN_SONGS.glob("*.h2song"))
    if source == "openmsx":
        return sorted(OPENMSX_SONGS.glob("*.mid"))
    found = []
    for base in PROJECT_ROOTS:
        for folder in SONG_FOLDERS:
            found += sorted(p for p in (base / folder).rglob("*") if p.suffix in (".mmp", ".mmpz"))
    return found


@dataclass(frozen=True)
class Source:
    """Where one kind of song comes from and how it is read and rendered."""
    program: str          # the renderer's executable
    apt: str              # what to install when it is missing
    package: str          # the Debian package whose version the render reports
    base: Path            # song paths are reported relative to this
    info: Callable[[Path], dict]
    command: Callable[[str, Path, Path], list[str]]  # (program, song, wav) -> argv


SOURCES = {
    "lmms": Source("lmms", "lmms lmms-common", "lmms-common", PROJECT_ROOTS[0], project_info,
                   lambda prog, song, wav: [prog, "--allowroot", "render", str(song), "-f", "wav", "-o", str(wav)]),
    "hydrogen": Source("h2cli", "hydrogen", "hydrogen-data", HYDROGEN_SONGS.parent, hydrogen_info,
                       lambda prog, song, wav: [prog, "-s", str(song), "-d", "auto", "-o", str(wav)]),
    # -n no MIDI input, -i no shell, -F render to a file as fast as possible
    "openmsx": Source("fluidsynth", "openttd-openmsx fluidsynth fluid-soundfont-gm (and pip install mido)",
                      "openttd-openmsx", OPENMSX_SONGS.parent, midi_info,
                      lambda prog, song, wav: [prog, "-ni", "-q", "-r", "44100", "-g", "0.6", "-F", str(wav),
                                               str(SOUNDFONT), str(song)]),
}


def wav_name(project: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", project.stem).strip("_") + ".wav"


# --- step 1: render ----------------------------------------------------------------------------------


def package_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def render(args: argparse.Namespace) -> int:
    import soundfile

    source = SOURCES[args.source]
    midi = args.source == "openmsx"
    program = shutil.which(source.program)
    if not program or (midi and not SOUNDFONT.exists()):
        print("apt-get install " + source.apt, file=sys.stderr)
        return 2
    out_dir: Path = args.dir
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")  # the render action needs no display
    projects = [p for p in find_projects(args.source) if not args.only or args.only in p.name]
    if not projects:
        print("no demo projects found: is the package installed?", file=sys.stderr)
        return 2
    package = source.package
    print(f"{package} {package_version(package)}: {len(projects)} projects", file=sys.stderr)
    rows = []
    for project in projects:
        rel = project.relative_to(source.base)
        try:
            info = source.info(project)
        except Exception as exc:
            print(f"{project}: unreadable ({exc}); skipped", file=sys.stderr)
            continue
        wav = wav_dir / wav_name(project)
        if not (args.keep and wav.exists()):
            started = time.monotonic()
            with open(out_dir / (wav.stem + ".render.log"), "w") as log:
                command = source.command(program, project, wav)
                proc = subprocess.run(
                    command,
                    env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout,
                )
            if proc.returncode != 0 or not wav.exists():
                print(f"{project.name}: render failed (exit {proc.returncode}); see the .render.log", file=sys.stderr)
                continue
            if args.seconds:
                audio, sr = soundfile.read(wav, dtype="int16", frames=int(args.seconds * 44100), always_2d=True)
                soundfile.write(wav, audio, sr, subtype="PCM_16")
            took = time.monotonic() - started
        else:
            took = 0.0
        audio, sr = soundfile.read(wav, dtype="float32", always_2d=True)
        seconds = len(audio) / sr
        rms = float(np.sqrt(np.mean(np.square(audio.mean(axis=1))))) if len(audio) else 0.0
        rms_dbfs = 20 * np.log10(max(rms, 1e-10))
        flags = list(info["flags"])
        if rms_dbfs < SILENT_DBFS:
            flags.append("silent-render")
        # The render must last the arrangement's length at the annotated tempo, plus at most the rest
        # of a bar and a release tail: a check that the renderer really played at that tempo.
        grid = info["grid_seconds"]
        if midi:
            # FluidSynth renders until every voice and the reverb have died away, often 10-25 s of
            # near-silence: check where the sound ends instead. It must end after the last note starts
            # (at the file's tempo; 0.5 % slack, as a soft last note can fade under -50 dBFS at
            # once) and within a bar and a release of the file's end.
            loud = np.nonzero(np.abs(audio).max(axis=1) > 10 ** (-50 / 20))[0]
            audible = loud[-1] / sr if len(loud) else 0.0
            if not args.seconds and not (0.995 * info["last_note_seconds"] <= audible <= grid + 240 / info["bpm"] + 6):
                flags.append("length-mismatch")
        elif not args.seconds and not (grid * 0.999 <= seconds <= grid + 240 / info["bpm"] + 6):
            flags.append("length-mismatch")
        rows.append({
            "file": wav.name,
            "bpm": f"{info['bpm']:g}",
            "source_project": str(rel),
            "notes": "; ".join(info["notes"] + ([f"instruments: {' '.join(info['instruments'])}"]
                                                if info["instruments"] else [])),
            "timesig": info["timesig"],
            "seconds": f"{seconds:.2f}",
            "grid_seconds": f"{grid:.2f}",
            "rms_dbfs": f"{rms_dbfs:.1f}",
            "flags": " ".join(flags),
        })
        print(f"{wav.name}: {info['bpm']:g} BPM {info['timesig']}, {seconds:.1f} s, {rms_dbfs:.1f} dBFS, "
              f"rendered in {took:.1f} s {' FLAGS: ' + ' '.join(flags) if flags else ''}", file=sys.stderr)
    write_annotations(out_dir / "annotations.csv", rows)
    print(f"wrote {out_dir / 'annotations.csv'} ({len(rows)} tracks)", file=sys.stderr)
    return 0


def write_annotations(path: Path, rows: list[dict]) -> None:
    """One CSV row per track; the columns are those of the first row."""
    if not rows:
        raise SystemExit(f"no tracks to write to {path}")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def excerpt(args: argparse.Namespace) -> int:
    """Copy a rendered set as excerpts: the --seconds after --offset of every WAV, same annotations."""
    import soundfile

    src, dst = args.src, args.dst
    (dst / "wav").mkdir(parents=True, exist_ok=True)
    with open(src / "annotations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        sr = soundfile.info(src / "wav" / row["file"]).samplerate
        audio, sr = soundfile.read(src / "wav" / row["file"], dtype="int16", always_2d=True,
                                   start=int(args.offset * sr), frames=int(args.seconds * sr))
        soundfile.write(dst / "wav" / row["file"], audio, sr, subtype="PCM_16")
        row["seconds"] = f"{len(audio) / sr:.2f}"
        row["notes"] = (row["notes"] + f"; excerpt {args.offset:g}+{args.seconds:g} s").lstrip("; ")
    write_annotations(dst / "annotations.csv", rows)
    print(f"wrote {len(rows)} excerpts to {dst}", file=sys.stderr)
    return 0


# --- step 2: score -----------------------------------------------------------------------------------

PEERS = [  # (column, table label)
    ("essentia_bpm", "Essentia RhythmExtractor2013 (multifeature)"),
    ("percival_bpm", "Essentia PercivalBpmEstimator"),
    ("librosa_bpm", "librosa feature.tempo"),
]


def run_kiln(kiln: str, wavs: list[Path], jobs: int) -> dict[str, dict]:
    started = time.monotonic()
    proc = subprocess.run(
        [kiln, "analyze", *map(str, wavs), "--format", "csv", "--jobs", str(jobs)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        print(f"kiln exited {proc.returncode}: {proc.stderr.strip()}", file=sys.stderr)
    rows = {Path(r["file"]).name: r for r in csv.DictReader(proc.stdout.splitlines())}
    print(f"kiln: {len(rows)} files in {time.monotonic() - started:.0f} s wall", file=sys.stderr)
    return rows


def run_peers(wavs: list[Path]) -> dict[str, dict]:
    import essentia
    import essentia.standard as es
    import librosa

    essentia.log.infoActive = False
    essentia.log.warningActive = False
    rhythm = es.RhythmExtractor2013(method="multifeature")
    percival = es.PercivalBpmEstimator(sampleRate=SAMPLE_RATE)
    out = {}
    for i, wav in enumerate(wavs, 1):
        row: dict = {"file": wav.name}
        started = time.monotonic()
        try:
            a44 = es.MonoLoader(filename=str(wav), sampleRate=SAMPLE_RATE)()
            rhythm.reset()
            row["essentia_bpm"] = float(rhythm(a44)[0])
            percival.reset()  # a reused PercivalBpmEstimator otherwise repeats its first answer
            row["percival_bpm"] = float(percival(a44))
        except Exception as exc:
            row["errors"] = f"essentia: {exc!r}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a22, _ = librosa.load(str(wav), sr=LIBROSA_RATE, mono=True)
            row["librosa_bpm"] = float(np.atleast_1d(librosa.feature.tempo(y=a22, sr=LIBROSA_RATE))[0])
        except Exception as exc:
            row["errors"] = (row.get("errors", "") + f" librosa: {exc!r}").strip()
        out[wav.name] = row
        print(f"[{i}/{len(wavs)}] {wav.name} {time.monotonic() - started:.0f} s", file=sys.stderr)
    return out


def to_float(text) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def verdict(ref: float, est: float | None) -> str:
    """Short mark for the per-track table: = within 0.5 BPM, ~ within 4 %, x2 / x1/2 / ... octave, ✗."""
    ok1, ok2, ok_half = bpm_scores(ref, est)
    if est is None:
        return "—"
    if ok_half:
        return f"{est:.2f}"
    if ok1:
        return f"{est:.2f} (~)"
    if ok2:
        ratio = est / ref
        name = min(("×2", 2.0), ("×½", 0.5), ("×3", 3.0), ("×⅓", 1 / 3), key=lambda m: abs(ratio - m[1]))[0]
        return f"{est:.2f} ({name})"
    return f"**{est:.2f}** ✗"


def score(args: argparse.Namespace) -> int:
    d: Path = args.dir
    with open(d / "annotations.csv", newline="") as f:
        annotations = list(csv.DictReader(f))
    flagged = [a for a in annotations if a["flags"]]
    scored = annotations if args.include_flagged else [a for a in annotations if not a["flags"]]
    wavs = [d / "wav" / a["file"] for a in annotations]

    if args.kiln:
        kiln = run_kiln(args.kiln, wavs, args.jobs)
        with open(d / "kiln.csv", "w", newline="") as f:
            cols = list(next(iter(kiln.values())).keys())
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for name in sorted(kiln):
                w.writerow({**kiln[name], "file": name})
    elif (d / "kiln.csv").exists():
        with open(d / "kiln.csv", newline="") as f:
            kiln = {Path(r["file"]).name: r for r in csv.DictReader(f)}
    else:
        print("no --kiln and no kiln.csv: Kiln's column stays empty", file=sys.stderr)
        kiln = {}

    peers_csv = d / "peers.csv"
    if args.reuse:
        with open(peers_csv, newline="") as f:
            peers = {r["file"]: r for r in csv.DictReader(f)}
    else:
        peers = run_peers(wavs)
        with open(peers_csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["file"] + [c for c, _ in PEERS] + ["errors"])
            w.writeheader()
            for r in peers.values():
                w.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in r.items()})

    detections = {"kiln": {n: to_float(r.get("bpm")) for n, r in kiln.items()}}
    for col, _ in PEERS:
        detections[col] = {n: to_float(r.get(col)) for n, r in peers.items()}
    labels = [("kiln", "Kiln")] + PEERS

    def table(subset: list[dict]) -> str:
        rows = []
        for tool, label in labels:
            s = np.array([bpm_scores(float(a["bpm"]), detections[tool].get(a["file"])) for a in subset], dtype=float)
            rows.append([label] + [f"{v:.3f} ({int(round(v * len(subset)))})" for v in s.mean(axis=0)])
        return markdown(["tool", "BPM Acc1", "BPM Acc2", "within ±0.5 BPM"], rows)

    minutes = sum(float(a["seconds"]) for a in scored) / 60
    print(f"## {len(scored)} tracks, {minutes:.1f} min of audio ({d})\n")
    if flagged:
        state = "included" if args.include_flagged else "left out"
        print("Flagged, " + state + ": " + ", ".join(f"{a['file']} ({a['flags']})" for a in flagged) + "\n")
    print(table(scored))
    four = [a for a in scored if a["timesig"] == "4/4"]
    if len(four) != len(scored):
        print(f"\n4/4 projects only ({len(four)}):\n")
        print(table(four))

    print("\n## Per track (annotation = the project's tempo; bold ✗ = outside Accuracy2)\n")
    header = ["file", "project BPM", "Kiln", "Kiln conf.", "Essentia multifeature", "Percival", "librosa", "notes"]
    rows = []
    for a in annotations:
        ref = float(a["bpm"])
        k = kiln.get(a["file"], {})
        notes = "; ".join(x for x in [a["flags"], a["timesig"] if a["timesig"] != "4/4" else ""] if x)
        rows.append([
            a["file"].removesuffix(".wav"), a["bpm"], verdict(ref, detections["kiln"].get(a["file"])),
            k.get("bpm_confidence", ""),
            *[verdict(ref, detections[c].get(a["file"])) for c, _ in PEERS], notes,
        ])
    print(markdown(header, rows))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    r = sub.add_parser("render", help="read the projects' tempi, render them, write annotations.csv")
    r.add_argument("dir", type=Path)
    r.add_argument("--source", choices=tuple(SOURCES), default="lmms",
                   help="lmms: LMMS demo projects (default); hydrogen: Hydrogen's drum-machine demo songs; "
                        "openmsx: the MIDI songs of OpenTTD's OpenMSX music set, played by FluidSynth")
    r.add_argument("--seconds", type=float, default=0, help="keep only the first N seconds (default: whole song)")
    r.add_argument("--timeout", type=float, default=900, help="seconds allowed for one render")
    r.add_argument("--only", help="only projects whose file name contains this")
    r.add_argument("--keep", action="store_true", help="do not re-render a WAV that exists")
    e = sub.add_parser("excerpt", help="copy a rendered set as excerpts (e.g. the first 90 s)")
    e.add_argument("src", type=Path)
    e.add_argument("dst", type=Path)
    e.add_argument("--seconds", type=float, default=90)
    e.add_argument("--offset", type=float, default=0)
    s = sub.add_parser("score", help="Kiln and the peers on the rendered set")
    s.add_argument("dir", type=Path)
    s.add_argument("--kiln", help="kiln binary to run (else read DIR/kiln.csv of an earlier run)")
    s.add_argument("--jobs", type=int, default=1, help="kiln analyze --jobs (default 1)")
    s.add_argument("--reuse", action="store_true", help="take the peers from DIR/peers.csv of an earlier run")
    s.add_argument("--include-flagged", action="store_true", help="also score flagged projects")
    args = ap.parse_args()
    return {"render": render, "excerpt": excerpt, "score": score}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
