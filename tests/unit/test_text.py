import pytest

from amhelpers.text import (
    geez_to_int,
    is_ethiopic,
    normalize,
    number_to_words,
    romanize,
    script_of,
    script_share,
    spell_numbers_amharic,
)


@pytest.mark.parametrize("word, latin", [
    ("ሰላም", "selam"), ("ሀገር", "heger"), ("አማርኛ", "amarnya"), ("ቋንቋ", "qwanqwa"),
    ("ኢትዮጵያ", "ityop'ya"), ("ጤና", "t'iena"), ("ሰላም።", "selam."),
    ("የእስራኤል", "yeisraiel"), ("ወንዝ", "wenz"), ("ዋጋ", "waga"), ("ያ", "ya"),
])
def test_romanize_known_words(word, latin):
    assert romanize(word) == latin


def test_romanize_covers_every_ethiopic_syllable_in_ascii():
    import unicodedata
    ranges = [(0x1200, 0x1380), (0x1380, 0x13A0), (0x2D80, 0x2DE0), (0xAB00, 0xAB30), (0x1E7E0, 0x1E800)]
    syllables = [chr(c) for lo, hi in ranges for c in range(lo, hi)
                 if unicodedata.name(chr(c), "").startswith("ETHIOPIC SYLLABLE")]
    assert len(syllables) > 450
    for ch in syllables:
        out = romanize(ch)
        assert out and out.isascii(), (hex(ord(ch)), out)


def test_romanize_passes_other_text_through():
    assert romanize("Addis ሰላም 2024") == "Addis selam 2024"


@pytest.mark.parametrize("n, words", [
    (0, "ዜሮ"), (7, "ሰባት"), (10, "አስር"), (11, "አስራ አንድ"), (21, "ሃያ አንድ"), (100, "መቶ"),
    (123, "መቶ ሃያ ሶስት"), (200, "ሁለት መቶ"), (1000, "ሺህ"), (2024, "ሁለት ሺህ ሃያ አራት"),
    (15000, "አስራ አምስት ሺህ"), (1_000_000, "አንድ ሚሊዮን"),
])
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_number_to_words_rejects_negative():
    with pytest.raises(ValueError, match="n >= 0|0 <= n"):
        number_to_words(-1)


@pytest.mark.parametrize("numeral, value", [("፩", 1), ("፲፪", 12), ("፻", 100), ("፳፻፲፮", 2016),
                                            ("፼", 10000), ("፻፼", 1_000_000), ("፪፼፫፻", 20300)])
def test_geez_numerals(numeral, value):
    assert geez_to_int(numeral) == value


def test_geez_rejects_other_characters():
    with pytest.raises(ValueError, match="not a Ge'ez numeral"):
        geez_to_int("፲a")


def test_normalize_amharic_numbers_punctuation_and_space():
    out = normalize("  በ2016   3.5% ዕድገት ፡፡ 1,200 ሰዎች ፲፪ ", "amh")
    assert out == "በሁለት ሺህ አስራ ስድስት ሶስት ነጥብ አምስት በመቶ ዕድገት። ሺህ ሁለት መቶ ሰዎች አስራ ሁለት"
    assert not any(ch.isdigit() for ch in out)


def test_normalize_is_idempotent_and_nfkc():
    text = "ﬁne\u200b  ＡＢＣ ሰላም፡፡"
    once = normalize(text, "amh")
    assert once == normalize(once, "amh")
    assert "ABC" in once and "fi" in once and "\u200b" not in once and once.endswith("።")


def test_normalize_english_keeps_digits():
    assert normalize(" Hello\t 1990 ", "eng") == "Hello 1990"


@pytest.mark.parametrize("lang", ["", "am", "AMH", None])
def test_normalize_rejects_bad_lang(lang):
    with pytest.raises(ValueError, match="ISO 639-3"):
        normalize("x", lang)


def test_script_detection():
    assert is_ethiopic("ሰ") and not is_ethiopic("s")
    assert [script_of(c) for c in "ሰa1።, "] == ["ethiopic", "latin", "digit", "punct", "punct", "space"]
    share = script_share("ሰላም ab")
    assert share["ethiopic"] == pytest.approx(0.6) and share["latin"] == pytest.approx(0.4)


def test_spell_numbers_keeps_prefix_attached():
    assert spell_numbers_amharic("በ3") == "በሶስት"
