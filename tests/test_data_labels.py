"""Label rules (official order and counts, non-Latin fix) and label-file parsing."""

from __future__ import annotations

import unicodedata

import pytest

from clip4str.charset import CHARSET_36, CHARSET_94, CHARSET_VIETNAMESE
from clip4str.data.labels import LabelFilter, read_label_file
from clip4str.errors import DatasetError


def test_official_rules_in_order_with_counts():
    f = LabelFilter(CHARSET_94, max_label_length=5)
    assert f(" He llo\t") == "Hello"  # whitespace removed
    assert f("café") == "cafe"  # NFKD then ASCII: the accent goes, the letter stays
    assert f("abcdef") is None  # too long
    assert f("ab€cd") == "abcd"  # non-ASCII deleted by normalisation before the length check
    assert f("") is None  # empty
    assert f("中文") is None  # deleted entirely by the ASCII step -> empty
    assert f.counts["seen"] == 6 and f.counts["kept"] == 3
    assert f.counts["too_long"] == 1 and f.counts["empty"] == 2
    assert f.dropped == 3
    assert "kept 3 of 6" in f.summary() and "too_long 1" in f.summary()


def test_length_is_checked_before_charset_removal_and_case_is_folded():
    f = LabelFilter(CHARSET_36, max_label_length=5)
    # 6 characters before removal: dropped even though 'a-b-c' -> 'abc' would fit (official order).
    assert f("a-b-c!") is None and f.counts["too_long"] == 1
    assert f("A-B!") == "ab"  # lowercased (charset has no upper case), punctuation removed
    assert f.counts["chars_removed"] == 1
    assert f.unsupported_chars == {"-": 1, "!": 1}
    assert f("!!!") is None and f.counts["empty"] == 1  # nothing supported left


def test_uppercase_only_charset_folds_up():
    f = LabelFilter("ABC", max_label_length=25)
    assert f("abc") == "ABC"


def test_drop_policy_drops_samples_with_unsupported_characters():
    f = LabelFilter(CHARSET_36, unsupported="drop")
    assert f("Hello") == "hello"
    assert f("it's") is None
    assert f.counts["out_of_charset"] == 1 and f.unsupported_chars["'"] == 1
    assert f.dropped == 1


def test_non_ascii_charset_keeps_labels_nfc():
    word = "Tiếng Việt"
    decomposed = unicodedata.normalize("NFD", word)
    assert decomposed != word
    f = LabelFilter(CHARSET_VIETNAMESE)
    assert f.normalize == "nfc"
    assert f(decomposed) == "TiếngViệt"  # NFD input is recomposed, nothing removed
    assert f.counts["chars_removed"] == 0
    # The official NFKD->ASCII step would have destroyed it:
    assert LabelFilter(CHARSET_VIETNAMESE, normalize="nfkd_ascii")(word) == "TiengViet"


def test_chinese_charset_and_compatibility_forms():
    charset = "中文字0123456789A"
    f = LabelFilter(charset)
    assert f("中文") == "中文"
    assert (
        f("中文Ａ１") == "中文A1"
    )  # full-width forms mapped through NFKC because their NFKC is in the charset
    assert f("中文x") == "中文" and f.counts["chars_removed"] == 1


def test_filter_argument_validation():
    with pytest.raises(ValueError, match="normalize"):
        LabelFilter(CHARSET_36, normalize="nfd")
    with pytest.raises(ValueError, match="unsupported"):
        LabelFilter(CHARSET_36, unsupported="keep")
    with pytest.raises(ValueError, match="charset"):
        LabelFilter("")
    assert LabelFilter(CHARSET_36, normalize=False).normalize == "none"


# ------------------------------------------------------------------------------------------------
# Label files


def test_read_real_tsv_with_header_and_extra_column(realdata_dir):
    records = read_label_file(realdata_dir / "svt_test" / "labels.tsv")
    assert len(records) == 647
    path, label = records[0]
    assert label == "DOOR" and path == (realdata_dir / "svt_test" / "crops" / "18_01_0.png").resolve()
    assert all(p.is_file() for p, _ in records)


def test_gt_txt_space_style_icdar_style_bom_crlf(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    text = '\ufeffa.png hello world\r\nb.png\tx y\tignored\r\n\r\nword_1.png, "JO""INT"\r\n'
    f = tmp_path / "gt.txt"
    f.write_text(text, encoding="utf-8", newline="")
    records = read_label_file(f)
    assert [lbl for _, lbl in records] == ["hello world", "x y", 'JO"INT']
    assert records[0][0] == tmp_path.resolve() / "a.png"


def test_paths_relative_to_images_dir_with_fallback(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "in_images.png").write_bytes(b"")
    (tmp_path / "next_to_file.png").write_bytes(b"")
    f = tmp_path / "labels.tsv"
    f.write_text("filename\tlabel\nin_images.png\ta\nnext_to_file.png\tb\nnowhere.png\tc\n", encoding="utf-8")
    records = dict((lbl, p) for p, lbl in read_label_file(f, images_dir=images))
    assert records["a"] == images / "in_images.png"
    assert records["b"] == tmp_path.resolve() / "next_to_file.png"
    assert records["c"] == images / "nowhere.png"  # reported by the reader of the image, not here


def test_label_file_errors_name_file_and_line(tmp_path):
    with pytest.raises(DatasetError, match="label file not found"):
        read_label_file(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.txt"
    bad.write_text("a.png\tok\nlonely_path\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bad.txt:2"):
        read_label_file(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("filename\tlabel\n\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no samples"):
        read_label_file(empty)
    with pytest.raises(DatasetError, match="images folder not found"):
        read_label_file(bad, images_dir=tmp_path / "nope")


def test_length_is_checked_after_case_folding_and_lines_split_on_newlines_only(tmp_path):
    upper = LabelFilter("ASÉ", max_label_length=2)  # upper-case only, non-ASCII: NFC, no ASCII folding
    assert upper("ßa") is None and upper.counts["too_long"] == 1  # 'ßa'.upper() == 'SSA': 3 characters
    assert upper("éa") == "ÉA"
    path = tmp_path / "labels.tsv"
    path.write_text("a.png\tab\x0bcd\nb.png\tef\n", encoding="utf-8")
    assert [label for _, label in read_label_file(path)] == ["ab\x0bcd", "ef"]
