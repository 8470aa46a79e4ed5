import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# ---------------------------------------------------------------------------- long numbers, fuzz
@pytest.mark.parametrize("digits", ["1" + "0" * 15, "251911234567890", "9" * 40, "1" * 5000])
def test_long_digit_strings_are_read_digit_by_digit(digits):
    out = normalize(f"ስልክ {digits} ነው", "amh")
    words = out.split()
    assert words[0] == "ስልክ" and words[-1] == "ነው" and len(words) == len(digits) + 2
    assert words[1] == {"1": "አንድ", "2": "ሁለት", "9": "ዘጠኝ"}[digits[0]]
    assert words[2] == {"0": "ዜሮ", "5": "አምስት", "9": "ዘጠኝ", "1": "አንድ"}[digits[1]]
    assert not any(ch.isdigit() for ch in out)


def test_phone_number_with_leading_zero_keeps_its_zero():
    assert normalize("0911234567", "amh").split()[:3] == ["ዜሮ", "ዘጠኝ", "አንድ"]
    # ordinary numbers and clock minutes are still spelled as quantities
    assert normalize("1፡02፡52 15000", "amh") == "አንድ፡ሁለት፡ሃምሳ ሁለት አስራ አምስት ሺህ"
    assert "ትሪሊዮን" in normalize("12345678901234", "amh")  # 14 digits: still a quantity
    assert normalize("999999999999999", "amh") == " ".join(["ዘጠኝ"] * 15)


def test_grouped_and_decimal_long_numbers():
    out = normalize("1,234,567,890,123,456.25", "amh")
    assert out.endswith("ነጥብ ሁለት አምስት") and out.split()[0] == "አንድ"


def test_huge_geez_numeral_is_read_sign_by_sign():
    assert normalize("፼፼፼፼", "amh") == " ".join(["አስር ሺህ"] * 4)
    assert normalize("፻፼", "amh") == "አንድ ሚሊዮን"
    assert normalize("፼" * 3000, "amh").count("ሺህ") == 3000


def test_controls_removed_before_nfkc_keep_normalize_idempotent():
    for text in ("e\u200b\u0301", "\u1100\u200b\u1161"):
        once = normalize(text, "eng")
        assert normalize(once, "eng") == once and len(once) == 1


_FUZZ_CHARS = (
    st.sampled_from(list("0123456789") * 4 + list(",./- %") + list("፡።፣\u200b\u0301\u1100\u1161e")
                    + [chr(c) for c in range(0x1369, 0x137D)])
    | st.characters(min_codepoint=0x1200, max_codepoint=0x135A)    # Ethiopic syllables
    | st.characters(min_codepoint=0x41, max_codepoint=0x7A)        # Latin
    | st.characters(min_codepoint=0x4E00, max_codepoint=0x4E40))   # CJK
_NUMBERISH = st.lists(st.one_of(st.text("0123456789", min_size=1, max_size=40),
                                st.sampled_from([",", ".", " ", "/", "-", "%", "፡"]),
                                st.text(st.characters(min_codepoint=0x1369, max_codepoint=0x137C),
                                        min_size=1, max_size=8)),
                      max_size=12).map("".join)
_FUZZ = settings(max_examples=300, deadline=None, derandomize=True)


@_FUZZ
@given(text=st.one_of(st.text(_FUZZ_CHARS, max_size=120), _NUMBERISH, st.text(max_size=60)),
       lang=st.sampled_from(["amh", "tir", "eng"]))
def test_normalize_fuzz_never_raises_and_is_idempotent(text, lang):
    out = normalize(text, lang)
    assert isinstance(out, str)
    assert normalize(out, lang) == out  # by design: see normalize's docstring
    assert out == out.strip() and "  " not in out


@_FUZZ
@given(text=_NUMBERISH)
def test_normalize_fuzz_amharic_spells_every_number(text):
    out = normalize(text, "amh")
    assert not any(ch.isdigit() for ch in out)
    assert not any(0x1369 <= ord(ch) <= 0x137C for ch in out)
