#!/usr/bin/env python3
"""Install the fonts that ``clip4str synth`` renders training words with, into one folder (default
``data/fonts``), and record each font's licence.

Fonts are never shipped in the package; this script fetches them by name from the registries this project
reaches, at pinned versions, so the same fonts (and so the same rendered words) come back on a new machine:

* Google Fonts families as ``@fontsource/<family>`` npm packages (``scripts/fontsource-fonts.txt``, one
  ``@fontsource/<family>@<version>`` per line): the Latin subset's ``.woff2`` files of weights 400 and 700,
  the family's heaviest weight (800 or 900) and its 400 italic, where the family has them, unpacked to
  ``.ttf``/``.otf`` by fontTools (faster to open). A family without a Latin subset is skipped.
* Debian font packages (``DEBIAN_PACKAGES`` below), installed with ``apt-get`` and copied in with their
  ``copyright`` file.

``data/fonts/LICENCES.tsv`` gets one line per family: source, family, version, licence, files. ``synth``
then takes ``--fonts data/fonts`` (training recipes name the folder in ``data.synth.fonts``).

    python scripts/install_fonts.py                 # everything (about 5 minutes; npm and apt-get needed)
    python scripts/install_fonts.py --no-debian     # only the npm families
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
FONTSOURCE_LIST = HERE / "fontsource-fonts.txt"
DEBIAN_PACKAGES = (
    "fonts-dejavu-core",
    "fonts-liberation",
    "fonts-freefont-ttf",
    "fonts-urw-base35",
    "fonts-texgyre",
    "fonts-crosextra-carlito",
    "fonts-crosextra-caladea",
    "fonts-linuxlibertine",
    "fonts-cantarell",
)
FONT_SUFFIXES = (".ttf", ".otf", ".woff", ".woff2")
# fontTools (with brotli) unpacks .woff2 into plain font files; pip installs them when missing
CONVERTER_PACKAGES = ("fonttools>=4.40", "brotli>=1.0")


def fontsource_entries(path: Path = FONTSOURCE_LIST) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def pick_files(files: list[str], family_id: str) -> list[str]:
    """The Latin ``.woff2`` files to keep: weights 400 and 700, the heaviest (>= 800), and 400 italic."""
    latin = {}
    for name in files:
        parts = name.removesuffix(".woff2").split("-")
        if not name.endswith(".woff2") or len(parts) < 3:
            continue
        # <id>-latin-<weight>-<style>.woff2 (the id may contain dashes)
        if name.startswith(f"{family_id}-latin-") and parts[-3] == "latin" and parts[-2].isdigit():
            latin[(int(parts[-2]), parts[-1])] = name
    if not latin:
        return []
    weights = sorted({w for w, s in latin if s == "normal"})
    keep = {latin[(w, "normal")] for w in weights if w in (400, 700)}
    heavy = [w for w in weights if w >= 800]
    if heavy:
        keep.add(latin[(heavy[-1], "normal")])
    if (400, "italic") in latin:
        keep.add(latin[(400, "italic")])
    if not keep:  # a single-weight family (e.g. only 300): its regular style
        keep.add(latin[(weights[0], "normal")] if weights else next(iter(latin.values())))
    return sorted(keep)


def to_sfnt(path: Path) -> Path:
    """Replace a ``.woff2`` by the plain ``.ttf``/``.otf`` it wraps (fontTools + brotli), when they are
    installed: FreeType then opens it about 50x faster, which matters when every rendered word loads a
    font. Without them the ``.woff2`` stays (``synth`` reads it too, just slower)."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError:
        return path
    try:
        font = TTFont(path)
        font.flavor = None
        suffix = ".otf" if "CFF " in font or "CFF2" in font else ".ttf"
        out = path.with_suffix(suffix)
        font.save(out)
    except Exception as err:  # brotli missing, or a damaged file: keep the original
        print(f"  {path.name}: kept as .woff2 ({type(err).__name__}: {err})", file=sys.stderr)
        return path
    path.unlink()
    return out


def install_fontsource(entry: str, out: Path, cache: Path) -> tuple[str, str] | None:
    """Fetch one ``@fontsource/<family>@<version>`` package; returns (folder, licence line) or None."""
    name, version = entry.rsplit("@", 1)
    family_id = name.split("/", 1)[1]
    dest = out / "fontsource" / family_id
    done = dest / "metadata.json"
    if not done.exists():
        tgz = cache / f"fontsource-{family_id}-{version}.tgz"
        if not tgz.exists():
            run = subprocess.run(
                ["npm", "pack", "--silent", f"{name}@{version}"],
                cwd=cache,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if run.returncode != 0 or not tgz.exists():
                print(f"  {entry}: npm pack failed: {run.stderr.strip()[-200:]}", file=sys.stderr)
                return None
        with tarfile.open(tgz) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            meta = json.loads(tar.extractfile(members["package/metadata.json"]).read())  # type: ignore[union-attr]
            files = [n.split("/")[-1] for n in members if n.startswith("package/files/")]
            keep = pick_files(files, family_id)
            if not keep:
                return None
            tmp = dest.with_name(dest.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for f in keep:
                (tmp / f).write_bytes(tar.extractfile(members[f"package/files/{f}"]).read())  # type: ignore[union-attr]
                to_sfnt(tmp / f)
            for extra in ("LICENSE", "package/LICENSE"):
                if f"package/{extra.split('/')[-1]}" in members:
                    m = members[f"package/{extra.split('/')[-1]}"]
                    (tmp / "LICENSE").write_bytes(tar.extractfile(m).read())  # type: ignore[union-attr]
                    break
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
    meta = json.loads(done.read_text(encoding="utf-8"))
    licence = meta.get("license") or "unknown"
    if isinstance(licence, dict):
        licence = licence.get("type", "unknown")
    fonts = sorted(p.name for p in dest.iterdir() if p.suffix in FONT_SUFFIXES)
    line = "\t".join(["npm", meta.get("family", family_id), f"{name}@{version}", licence, " ".join(fonts)])
    return str(dest), line


def install_debian(packages: tuple[str, ...], out: Path) -> list[str]:
    """apt-get install ``packages`` and copy their font files and copyright into ``out/debian/<pkg>``."""
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    lines = []
    for pkg in packages:
        listing = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, check=True).stdout
        fonts = [
            Path(p) for p in listing.splitlines() if p.lower().endswith(FONT_SUFFIXES) and Path(p).is_file()
        ]
        version = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True, check=True
        ).stdout
        dest = out / "debian" / pkg
        dest.mkdir(parents=True, exist_ok=True)
        for f in fonts:
            target = dest / f.name
            if not target.exists():
                shutil.copy2(f, target)
        copyright_file = Path(f"/usr/share/doc/{pkg}/copyright")
        if copyright_file.exists():
            shutil.copy2(copyright_file, dest / "copyright")
        licence = _debian_licence(copyright_file)
        lines.append("\t".join(["debian", pkg, version, licence, " ".join(sorted(f.name for f in fonts))]))
    return lines


def _debian_licence(copyright_file: Path) -> str:
    if not copyright_file.exists():
        return "see /usr/share/doc"
    names = []
    for line in copyright_file.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("License:"):
            name = line.split(":", 1)[1].strip()
            if name and name not in names:
                names.append(name)
    return ", ".join(names) or "see copyright"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="data/fonts", help="folder to install into (default: data/fonts)")
    parser.add_argument("--no-debian", action="store_true", help="skip the Debian packages")
    parser.add_argument("--no-npm", action="store_true", help="skip the @fontsource packages")
    parser.add_argument("--jobs", type=int, default=8, help="parallel npm downloads (default: 8)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    if not args.no_npm:
        if shutil.which("npm") is None:
            print("install_fonts: npm not found (Debian: apt-get install npm)", file=sys.stderr)
            return 2
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *CONVERTER_PACKAGES], check=False)
        entries = fontsource_entries()
        cache = out / ".npm-cache"
        cache.mkdir(exist_ok=True)
        print(f"install_fonts: {len(entries)} @fontsource packages -> {out}/fontsource", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda e: install_fontsource(e, out, cache), entries))
        kept = [r for r in results if r]
        lines += [line for _, line in kept]
        print(f"install_fonts: {len(kept)} families with a Latin subset", flush=True)
    if not args.no_debian:
        lines += install_debian(DEBIAN_PACKAGES, out)
    header = "source\tfamily\tversion\tlicence\tfiles"
    licences = out / "LICENCES.tsv"
    skipped = {"npm"} if args.no_npm else set()
    skipped |= {"debian"} if args.no_debian else set()
    if skipped and licences.exists():  # keep what an earlier run recorded for the parts skipped now
        old = licences.read_text(encoding="utf-8").splitlines()[1:]
        lines += [line for line in old if line.split("\t", 1)[0] in skipped]
    licences.write_text("\n".join([header, *sorted(lines)]) + "\n", encoding="utf-8")
    n_files = sum(
        1 for p in out.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and ".npm-cache" not in p.parts
    )
    print(f"install_fonts: {n_files} font files; licences in {out / 'LICENCES.tsv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
