#!/usr/bin/env python3
"""Generates model/tokenizer/unicode_tables.cc from Python's `unicodedata` (nothing else).

Usage: python3 tools/gen_unicode_tables.py [output_path]
  default output: model/tokenizer/unicode_tables.cc (relative to the repo root).

Tables written (all sorted by code point, looked up by binary search in unicode.cc):
  kLetterRanges / kNumberRanges   general categories L* and N* as [first, last] ranges
  kWhiteSpaceRanges               the Unicode White_Space property (what regex `\\s` means)
  kCombiningClasses               [first, last, ccc] ranges for non-zero canonical classes
  kDecompositions                 {code point, first, second}: one canonical decomposition step
                                  (second == 0 for singletons); Hangul syllables excluded
  kCompositions                   {first, second, composite}, sorted by (first, second):
                                  primary composites only (exclusions, singletons and
                                  non-starter decompositions removed); Hangul excluded
NFC matches Hugging Face `tokenizers`, whose NFC normalizer (crate
unicode-normalization-alignments) uses Unicode 9.0 data: the code points listed in
HF_NFC_UNKNOWN (added after 9.0, with a non-zero combining class or a canonical decomposition
in newer data) get class 0 and no decomposition/composition, as they do there. The list was
derived by comparing tokenizers 0.22's NFC with unicodedata on every such code point; when the
`tokenizers` package is importable the script repeats that check. Letter/number/White_Space
tables use the full Python data (Oniguruma, HF's regex engine, is on Unicode 14 as well).
Before writing, the script re-implements NFC from these tables and checks it against
unicodedata.normalize("NFC", ...) for every code point and for a set of mark sequences; it
aborts when they disagree.
"""

import os
import sys
import unicodedata

MAX_CP = 0x110000
HANGUL_S_BASE, HANGUL_S_COUNT = 0xAC00, 11172
HANGUL_L_BASE, HANGUL_V_BASE, HANGUL_T_BASE = 0x1100, 0x1161, 0x11A7
HANGUL_V_COUNT, HANGUL_T_COUNT = 21, 28

# The White_Space property (PropList.txt); unicodedata does not expose it. It has been stable
# since Unicode 6.3. Checked below against str.isspace, which is a superset.
WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
               (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
               (0x3000, 0x3000)]


# Code points that HF tokenizers' NFC (Unicode 9.0) does not know; see the module docstring.
HF_NFC_UNKNOWN = [
    (0x7FD, 0x7FD), (0x898, 0x89F), (0x8CA, 0x8D3), (0x9FE, 0x9FE), (0xC3C, 0xC3C),
    (0xD3B, 0xD3C), (0xEBA, 0xEBA), (0x1715, 0x1715), (0x1ABF, 0x1ACE), (0x1DF6, 0x1DFA),
    (0xA82C, 0xA82C), (0x10D24, 0x10D27), (0x10EAB, 0x10EAC), (0x10F46, 0x10F50),
    (0x10F82, 0x10F85), (0x11070, 0x11070), (0x1133B, 0x1133B), (0x1145E, 0x1145E),
    (0x11839, 0x1183A), (0x11938, 0x11938), (0x1193D, 0x1193E), (0x11943, 0x11943),
    (0x119E0, 0x119E0), (0x11A34, 0x11A34), (0x11A47, 0x11A47), (0x11A99, 0x11A99),
    (0x11D42, 0x11D42), (0x11D44, 0x11D45), (0x11D97, 0x11D97), (0x16FF0, 0x16FF1),
    (0x1E130, 0x1E136), (0x1E2AE, 0x1E2AE), (0x1E2EC, 0x1E2EF),
]
HF_NFC_UNKNOWN_SET = {cp for a, b in HF_NFC_UNKNOWN for cp in range(a, b + 1)}


def ranges_where(pred):
    out, start = [], None
    for cp in range(MAX_CP + 1):
        hit = cp < MAX_CP and pred(cp)
        if hit and start is None:
            start = cp
        elif not hit and start is not None:
            out.append((start, cp - 1))
            start = None
    return out


def is_hangul_syllable(cp):
    return HANGUL_S_BASE <= cp < HANGUL_S_BASE + HANGUL_S_COUNT


def canonical_decomposition(cp):
    d = unicodedata.decomposition(chr(cp))
    if not d or d.startswith("<"):
        return None
    return [int(x, 16) for x in d.split()]


def build_tables():
    letters = ranges_where(lambda cp: unicodedata.category(chr(cp)).startswith("L"))
    numbers = ranges_where(lambda cp: unicodedata.category(chr(cp)).startswith("N"))
    for first, last in WHITE_SPACE:
        for cp in range(first, last + 1):
            assert chr(cp).isspace(), hex(cp)

    ccc_ranges = []
    for cp in range(MAX_CP):
        c = unicodedata.combining(chr(cp))
        if not c or cp in HF_NFC_UNKNOWN_SET:
            continue
        if ccc_ranges and ccc_ranges[-1][1] == cp - 1 and ccc_ranges[-1][2] == c:
            ccc_ranges[-1][1] = cp
        else:
            ccc_ranges.append([cp, cp, c])

    decomps, comps = [], []
    for cp in range(MAX_CP):
        if is_hangul_syllable(cp) or cp in HF_NFC_UNKNOWN_SET:
            continue
        d = canonical_decomposition(cp)
        if d is None:
            continue
        assert 1 <= len(d) <= 2, hex(cp)
        decomps.append((cp, d[0], d[1] if len(d) == 2 else 0))
        # A primary composite is NFC-stable; exclusions and non-starter decompositions are not.
        if len(d) == 2 and unicodedata.normalize("NFC", chr(cp)) == chr(cp):
            comps.append((d[0], d[1], cp))
    comps.sort()
    return letters, numbers, ccc_ranges, decomps, comps


class Nfc:
    """NFC from the generated tables, mirroring unicode.cc, used to verify them."""

    def __init__(self, ccc_ranges, decomps, comps):
        self.ccc = {}
        for first, last, c in ccc_ranges:
            for cp in range(first, last + 1):
                self.ccc[cp] = c
        self.decomp = {cp: (a, b) for cp, a, b in decomps}
        self.comp = {(a, b): c for a, b, c in comps}

    def decompose(self, cp, out):
        if is_hangul_syllable(cp):
            s = cp - HANGUL_S_BASE
            out.append(HANGUL_L_BASE + s // (HANGUL_V_COUNT * HANGUL_T_COUNT))
            out.append(HANGUL_V_BASE + (s % (HANGUL_V_COUNT * HANGUL_T_COUNT)) // HANGUL_T_COUNT)
            if s % HANGUL_T_COUNT:
                out.append(HANGUL_T_BASE + s % HANGUL_T_COUNT)
            return
        d = self.decomp.get(cp)
        if d is None:
            out.append(cp)
            return
        self.decompose(d[0], out)
        if d[1]:
            self.decompose(d[1], out)

    def compose_pair(self, a, b):
        if HANGUL_L_BASE <= a < HANGUL_L_BASE + 19 and HANGUL_V_BASE <= b < HANGUL_V_BASE + 21:
            return HANGUL_S_BASE + ((a - HANGUL_L_BASE) * 21 + (b - HANGUL_V_BASE)) * 28
        if (is_hangul_syllable(a) and (a - HANGUL_S_BASE) % 28 == 0
                and HANGUL_T_BASE < b < HANGUL_T_BASE + 28):
            return a + (b - HANGUL_T_BASE)
        return self.comp.get((a, b))

    def normalize(self, s):
        buf = []
        for ch in s:
            self.decompose(ord(ch), buf)
        # Canonical ordering: stable sort of each run of non-starters by class.
        i = 0
        while i < len(buf):
            if self.ccc.get(buf[i], 0) == 0:
                i += 1
                continue
            j = i
            while j < len(buf) and self.ccc.get(buf[j], 0) != 0:
                j += 1
            buf[i:j] = sorted(buf[i:j], key=lambda c: self.ccc.get(c, 0))
            i = j
        if not buf:
            return ""
        out = [buf[0]]
        starter = 0
        last_class = self.ccc.get(buf[0], 0)
        if last_class:
            last_class = 256
        for ch in buf[1:]:
            cls = self.ccc.get(ch, 0)
            comp = self.compose_pair(out[starter], ch)
            if comp is not None and (last_class < cls or last_class == 0):
                out[starter] = comp
                continue
            if cls == 0:
                starter = len(out)
            last_class = cls
            out.append(ch)
        return "".join(chr(c) for c in out)


def verify(ccc_ranges, decomps, comps):
    nfc = Nfc(ccc_ranges, decomps, comps)
    samples = []
    for cp in range(MAX_CP):
        if 0xD800 <= cp < 0xE000:
            continue
        samples.append(chr(cp))
    marks = [0x301, 0x300, 0x323, 0x327, 0x308, 0x345, 0x5B0, 0x93C, 0x1B34, 0x3099, 0x0F71]
    bases = ["e", "E", "a", "o", "\u03b1", "\u0391", "\u1100\u1161", "\uac00", "\u0915", "\u1b05",
             "\u304b", "\u0f40", "\u00e9", "\u1e0d"]
    for b in bases:
        for m1 in marks:
            samples.append(b + chr(m1))
            for m2 in marks:
                samples.append(b + chr(m1) + chr(m2))
                samples.append(chr(m1) + b + chr(m2))
    samples.append("\u1100\u1161\u11a8\u0301")
    for s in samples:
        if any(ord(ch) in HF_NFC_UNKNOWN_SET for ch in s):
            continue
        want = unicodedata.normalize("NFC", s)
        got = nfc.normalize(s)
        if got != want:
            sys.exit("NFC mismatch for %r: tables give %r, unicodedata %r" % (s, got, want))


def verify_against_hf(ccc_ranges, decomps, comps):
    """Checks the tables against HF tokenizers' NFC, when that package is importable."""
    try:
        from tokenizers import normalizers
    except ImportError:
        print("tokenizers not importable: skipping the check against HF NFC")
        return
    nfc = Nfc(ccc_ranges, decomps, comps)
    hf = normalizers.NFC()
    samples = []
    for cp in range(MAX_CP):
        if 0xD800 <= cp < 0xE000:
            continue
        samples.append(chr(cp))
        if unicodedata.combining(chr(cp)):
            samples.append("x" + chr(cp) + "\u0334")
            samples.append("x\u0301" + chr(cp))
        d = canonical_decomposition(cp)
        if d:
            samples.append("".join(chr(x) for x in d))
    got = "|".join(nfc.normalize(s) for s in samples)
    want = hf.normalize_str("|".join(samples))
    if got != want:
        bad = [s for s, a, b in zip(samples, got.split("|"), want.split("|")) if a != b]
        sys.exit("tables disagree with HF tokenizers NFC on %d samples, e.g. %r" % (len(bad), bad[:5]))
    print("tables agree with HF tokenizers NFC on %d samples" % len(samples))


def fmt_rows(rows, per_line):
    lines = []
    for i in range(0, len(rows), per_line):
        lines.append("    " + " ".join(rows[i:i + per_line]))
    return "\n".join(lines)


def emit(path, letters, numbers, ccc_ranges, decomps, comps):
    def ranges(name, rs):
        rows = ["{0x%X,0x%X}," % (a, b) for a, b in rs]
        return ("const CodePointRange %s[] = {\n%s\n};\nconst size_t %sSize = %d;\n"
                % (name, fmt_rows(rows, 6), name, len(rs)))

    out = []
    out.append("// GENERATED by tools/gen_unicode_tables.py from Python unicodedata %s. DO NOT EDIT."
               % unicodedata.unidata_version)
    out.append("// Regenerate: python3 tools/gen_unicode_tables.py")
    out.append('#include "model/tokenizer/unicode_tables.h"\n')
    out.append("namespace moemesh::unicode_tables {\n")
    out.append('const char kUnicodeVersion[] = "%s";\n' % unicodedata.unidata_version)
    out.append(ranges("kLetterRanges", letters))
    out.append(ranges("kNumberRanges", numbers))
    out.append(ranges("kWhiteSpaceRanges", WHITE_SPACE))
    rows = ["{0x%X,0x%X,%d}," % tuple(r) for r in ccc_ranges]
    out.append("const CombiningClassRange kCombiningClasses[] = {\n%s\n};\n"
               "const size_t kCombiningClassesSize = %d;\n" % (fmt_rows(rows, 5), len(rows)))
    rows = ["{0x%X,0x%X,0x%X}," % r for r in decomps]
    out.append("const CodePointTriple kDecompositions[] = {\n%s\n};\n"
               "const size_t kDecompositionsSize = %d;\n" % (fmt_rows(rows, 4), len(rows)))
    rows = ["{0x%X,0x%X,0x%X}," % r for r in comps]
    out.append("const CodePointTriple kCompositions[] = {\n%s\n};\n"
               "const size_t kCompositionsSize = %d;\n" % (fmt_rows(rows, 4), len(rows)))
    out.append("}  // namespace moemesh::unicode_tables")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        root, "model", "tokenizer", "unicode_tables.cc")
    letters, numbers, ccc_ranges, decomps, comps = build_tables()
    verify(ccc_ranges, decomps, comps)
    verify_against_hf(ccc_ranges, decomps, comps)
    emit(path, letters, numbers, ccc_ranges, decomps, comps)
    print("wrote %s (%d bytes): %d letter, %d number ranges, %d ccc ranges, %d decompositions, "
          "%d compositions" % (path, os.path.getsize(path), len(letters), len(numbers),
                               len(ccc_ranges), len(decomps), len(comps)))


if __name__ == "__main__":
    main()
