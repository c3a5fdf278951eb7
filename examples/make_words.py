"""Render the example word images in examples/words/ with clip4str's own synthesiser (DejaVu fonts).

python examples/make_words.py
"""

from pathlib import Path

from clip4str.data.synth import SynthConfig, _bundled_dejavu_fonts, render_sample

WORDS = ["hello", "world", "coffee", "station", "EXIT", "2026", "Open", "market"]


def main() -> None:
    out = Path(__file__).with_name("words")
    out.mkdir(exist_ok=True)
    fonts = [str(f) for f in _bundled_dejavu_fonts()]
    for i, word in enumerate(WORDS):
        cfg = SynthConfig(
            charset="".join(sorted(set(word))),
            words=[word],
            random_ratio=0.0,
            fonts=fonts,
            seed=7,
            p_low_res=0.0,
            p_motion_blur=0.0,
            p_blur=0.1,
        )
        data, label = render_sample(i, cfg)
        suffix = ".jpg" if data[:2] == b"\xff\xd8" else ".png"
        (out / f"{label}{suffix}").write_bytes(data)
        print(out / f"{label}{suffix}")


if __name__ == "__main__":
    main()
