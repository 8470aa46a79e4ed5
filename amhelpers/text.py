"""One text normaliser for tokenizer training, data building and inference; Ethiopic helpers.

``normalize(text, lang)`` is the only normaliser in the project. Using the same function in
every stage avoids the train/inference mismatch that docs/original_fix.md lists among the causes of the
original Amharic failure.
"""

from __future__ import annotations

import re
import unicodedata

ETHIOPIC_RANGES = ((0x1200, 0x139F), (0x2D80, 0x2DDF), (0xAB00, 0xAB2F), (0x1E7E0, 0x1E7FF))
ETHIOPIC_PUNCT = {"፡": " ", "።": ".", "፣": ",", "፤": ";", "፥": ":", "፦": ":", "፧": "?",
                  "፠": "", "፨": ""}

_ONES = ["", "አንድ", "ሁለት", "ሶስት", "አራት", "አምስት", "ስድስት", "ሰባት", "ስምንት", "ዘጠኝ"]
_TENS = ["", "አስር", "ሃያ", "ሰላሳ", "አርባ", "ሃምሳ", "ስልሳ", "ሰባ", "ሰማንያ", "ዘጠና"]
_SCALES = [(10**12, "ትሪሊዮን"), (10**9, "ቢሊዮን"), (10**6, "ሚሊዮን"), (1000, "ሺህ")]
_ZERO, _HUNDRED, _POINT, _PERCENT = "ዜሮ", "መቶ", "ነጥብ", "በመቶ"

# A digit string this long (or a number over 3 digits with a leading zero: a phone number,
# an id) is read digit by digit, as people read it; shorter numbers are spelled as quantities.
LONG_NUMBER_DIGITS = 15
_MAX_SPELLED = 10**15

_GEEZ_DIGITS = {chr(0x1369 + i): i + 1 for i in range(9)}
_GEEZ_TENS = {chr(0x1372 + i): 10 * (i + 1) for i in range(9)}
_GEEZ_NUMBER = re.compile("[\u1369-\u137c]+")
_ARABIC_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
_CONTROL = re.compile(r"[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200f\ufeff]")
_SPACE = re.compile(r"\s+")


def is_ethiopic(ch: str) -> bool:
    """Return True when ``ch`` lies in an Ethiopic block (U+1200-U+139F and supplements)."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in ETHIOPIC_RANGES)


def script_of(ch: str) -> str:
    """Classify one character.

    Returns:
        ``"ethiopic"``, ``"latin"``, ``"digit"``, ``"space"``, ``"punct"`` or ``"other"``.
    """
    if is_ethiopic(ch):
        cat = unicodedata.category(ch)
        return "punct" if cat.startswith("P") else "digit" if cat.startswith("N") else "ethiopic"
    if ch.isspace():
        return "space"
    if ch.isdigit():
        return "digit"
    cat = unicodedata.category(ch)
    if cat.startswith("L"):
        return "latin" if "LATIN" in unicodedata.name(ch, "") else "other"
    if cat.startswith(("P", "S")):
        return "punct"
    return "other"


def script_share(text: str) -> dict[str, float]:
    """Return the share of each script among the non-space characters of ``text``."""
    counts: dict[str, int] = {}
    for ch in text:
        kind = script_of(ch)
        if kind != "space":
            counts[kind] = counts.get(kind, 0) + 1
    total = sum(counts.values()) or 1
    return {kind: n / total for kind, n in sorted(counts.items())}


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += ([_ONES[hundreds]] if hundreds > 1 else []) + [_HUNDRED]
    tens, ones = divmod(rest, 10)
    if tens:
        # 11-19 use the combining form "አስራ"; other tens do not change.
        words.append("አስራ" if tens == 1 and ones else _TENS[tens])
    if ones:
        words.append(_ONES[ones])
    return words


def number_to_words(n: int) -> str:
    """Spell a non-negative integer in Amharic words (``2024`` -> ``ሁለት ሺህ ሃያ አራት``).

    Raises:
        ValueError: for negative numbers or numbers of 10^15 and more.
    """
    if n < 0 or n >= 10**15:
        raise ValueError(f"number_to_words takes 0 <= n < 10**15, got {n}")
    if n == 0:
        return _ZERO
    words: list[str] = []
    for value, name in _SCALES:
        count, n = divmod(n, value)
        if count:
            words += ([] if count == 1 and value == 1000 else _below_thousand(count)) + [name]
    words += _below_thousand(n)
    return " ".join(words)


def geez_to_int(numeral: str) -> int:
    """Convert a Ge'ez numeral (``፲፪`` = 12, ``፳፻፲፮`` = 2016) to an int.

    Raises:
        ValueError: when ``numeral`` holds a character that is not a Ge'ez numeral.
    """
    total = group = current = 0
    for ch in numeral:
        if ch in _GEEZ_DIGITS:
            current += _GEEZ_DIGITS[ch]
        elif ch in _GEEZ_TENS:
            current += _GEEZ_TENS[ch]
        elif ch == "፻":
            group += (current or 1) * 100
            current = 0
        elif ch == "፼":
            total = (total + group + current or 1) * 10000
            group = current = 0
        else:
            raise ValueError(f"{ch!r} in {numeral!r} is not a Ge'ez numeral (U+1369-U+137C)")
    return total + group + current


def digits_to_words(digits: str) -> str:
    """Read a digit string digit by digit (``0911`` -> ``ዜሮ ዘጠኝ አንድ አንድ``)."""
    return " ".join(_ONES[int(d)] or _ZERO for d in digits)


def _reads_digit_by_digit(whole: str) -> bool:
    """True for an id-like digit string: 15+ digits, or 4+ digits starting with 0."""
    return len(whole) >= LONG_NUMBER_DIGITS or (len(whole) >= 4 and int(whole[0]) == 0)


def _spell_arabic(match: re.Match) -> str:
    token = match.group(0).replace(",", "")
    whole, _, fraction = token.partition(".")
    words = digits_to_words(whole) if _reads_digit_by_digit(whole) else number_to_words(int(whole))
    if fraction:
        words += f" {_POINT} " + digits_to_words(fraction)
    return words


def _spell_geez(match: re.Match) -> str:
    """Spell a Ge'ez numeral; one too large to say as a quantity is read sign by sign."""
    numeral = match.group(0)
    if numeral.count("፼") <= 3:  # more than three ፼ is always >= 10**15 (and a huge int)
        value = geez_to_int(numeral)
        if value < _MAX_SPELLED:
            return number_to_words(value)
    return " ".join(number_to_words(geez_to_int(ch)) for ch in numeral)


def spell_numbers_amharic(text: str) -> str:
    """Replace Arabic-digit and Ge'ez numbers in ``text`` by Amharic words (``%`` -> ``በመቶ``).

    Numbers are spelled as quantities (``2024`` -> ``ሁለት ሺህ ሃያ አራት``), except digit strings
    of :data:`LONG_NUMBER_DIGITS` or more digits and those of 4+ digits with a leading zero
    (phone numbers, ids), which are read digit by digit. Never raises on any ``str``.
    """
    text = _GEEZ_NUMBER.sub(_spell_geez, text)
    text = re.sub(r"(\d)\s*%", rf"\1 {_PERCENT}", text)
    return _ARABIC_NUMBER.sub(_spell_arabic, text)


def normalize(text: str, lang: str) -> str:
    """The project's one normaliser.

    Steps: control and zero-width characters removed, Unicode NFKC (as SentencePiece's
    ``nmt_nfkc`` does), ``፡፡`` -> ``።``, and for Amharic (``amh``) numbers spelled out as
    words; finally whitespace collapsed and stripped. Ethiopic letters are never changed.
    The result is a fixed point: ``normalize(normalize(t, lang), lang) == normalize(t, lang)``
    (so text normalised at one stage can be passed again at the next). It never raises on a
    ``str`` and a valid code.

    Args:
        text: raw text.
        lang: ISO 639-3 code (``amh``, ``eng``, ``tir``, ``orm``, ...).

    Returns:
        The normalised text.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize() takes str text, got {type(text).__name__}")
    if not isinstance(lang, str) or not re.fullmatch(r"[a-z]{3}", lang):
        raise ValueError(f"lang must be an ISO 639-3 code such as 'amh' or 'eng', got {lang!r}")
    # Controls go first: removed after NFKC they could join characters NFKC would compose.
    text = _CONTROL.sub("", text)
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"፡\s*፡", "።", text)
    if lang == "amh":
        text = spell_numbers_amharic(text)
    text = re.sub(r"\s+([።፣፤፥፧.,;:!?])", r"\1", text) if lang in ("amh", "tir") else text
    return _SPACE.sub(" ", text).strip()


_VOWELS = {"A": "e", "U": "u", "I": "i", "AA": "a", "EE": "ie", "E": "", "O": "o",
           "OA": "wa", "WA": "wa", "WAA": "wa", "WI": "wi", "WEE": "wie", "WE": "w",
           "YA": "ya"}
_CARRIER_VOWELS = {**_VOWELS, "A": "a", "E": "i"}
_CONSONANTS = {"HH": "h", "X": "h", "SZ": "s", "QH": "q", "KX": "h", "C": "ch", "NY": "ny",
               "TH": "t'", "CH": "ch'", "PH": "p'", "TS": "ts'", "TZ": "ts'", "DD": "d",
               "GG": "g", "ZH": "zh", "SS": "s'", "CC": "ch", "ZZ": "z", "CCH": "ch'",
               "QY": "qy", "KY": "ky", "XY": "hy", "GY": "gy"}
_VOWEL = "(WAA|WEE|WA|WI|WE|OA|YA|AA|EE|A|U|I|E|O)"
_CARRIER = re.compile(rf"^(?:GLOTTAL|PHARYNGEAL) {_VOWEL}$")
_SYLLABLE = re.compile(rf"^([A-Z]+?){_VOWEL}$")


def _romanize_char(ch: str) -> str:
    if ch in ETHIOPIC_PUNCT:
        return ETHIOPIC_PUNCT[ch]
    if not is_ethiopic(ch):
        return ch
    name = unicodedata.name(ch, "")
    if name.startswith("ETHIOPIC SYLLABLE "):
        rest = name[len("ETHIOPIC SYLLABLE "):]
        carrier = _CARRIER.match(rest)
        if carrier:  # the vowel carriers አ and ዐ: no consonant sound
            return _CARRIER_VOWELS[carrier.group(1)]
        match = _SYLLABLE.match(rest.split(" ")[-1])  # drop qualifiers such as SEBATBEIT
        if match:
            consonant, vowel = match.groups()
            return _CONSONANTS.get(consonant, consonant.lower()) + _VOWELS[vowel]
    if ch in _GEEZ_DIGITS or ch in _GEEZ_TENS or ch in "፻፼":
        return str(geez_to_int(ch))
    return ""  # combining marks and tonal marks carry no letters


def romanize(text: str) -> str:
    """Romanise Ethiopic text (``ሰላም`` -> ``selam``); other characters pass through.

    The consonant comes from the syllable's Unicode name and the vowel from its order
    (ä=e, u, i, a, e=ie, ə=none, o, wa), which covers the Ethiopic block and its
    supplements. Ethiopic punctuation maps to Latin punctuation.
    """
    return "".join(_romanize_char(ch) for ch in text)
