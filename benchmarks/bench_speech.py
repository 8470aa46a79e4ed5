"""Time espeak-ng synthesis and log-mel extraction per phrase; print one JSON line.

Synthesis runs into a fresh temporary cache (so every phrase is a miss) with the default two
jobs; log-mel is timed on the resulting wavs after one warm-up call.

    python benchmarks/bench_speech.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amhelpers import codec, speech

PHRASES = {
    "eng": [
        "Where is the nearest station?", "The rain stopped this morning.",
        "She opened the window slowly.", "We will meet after lunch.",
        "The children are playing outside.", "Please close the door.",
        "He bought three loaves of bread.", "The market opens at eight.",
        "They walked along the river.", "I cannot find my keys.",
    ],
    "amh": [
        "ሰላም ለዓለም", "ዛሬ ጥሩ ቀን ነው", "ውሃ እፈልጋለሁ", "መጽሐፉ በጠረጴዛው ላይ ነው",
        "ልጆቹ ውጭ እየተጫወቱ ነው", "እባክህ በሩን ዝጋ", "ገበያው በስምንት ሰዓት ይከፈታል",
        "ወደ ቤት እንሂድ", "ቡና መጠጣት እወዳለሁ", "አየሩ ቀዝቃዛ ነው",
    ],
}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-speech-") as tmp:
        os.environ["AMHELPERS_HOME"] = tmp
        speech.synthesize(["warm up"], "eng", progress=False)  # imports, voice list
        start = time.perf_counter()
        paths = [p for lang, texts in PHRASES.items()
                 for p in speech.synthesize(texts, lang, progress=False)]
        synth_s = time.perf_counter() - start

        wavs = [speech.load_wav(p) for p in paths]
        codec.log_mel(wavs[0])
        start = time.perf_counter()
        for wav in wavs:
            codec.log_mel(wav)
        feature_s = time.perf_counter() - start

    n = len(paths)
    print(json.dumps({
        "bench": "speech",
        "synth_ms_per_phrase": round(1000 * synth_s / n, 2),
        "feature_ms_per_phrase": round(1000 * feature_s / n, 2),
        "audio_s_per_phrase": round(sum(len(w) for w in wavs) / speech.SAMPLE_RATE / n, 3),
        "jobs": 2,
        "n": n,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
