#!/usr/bin/env python3
"""Build the semantic cache's labelled quality set and split it, once, into a tuning part and
a test part.

Three independent sources:
  templates   templates.txt beside this script (written for this repository);
  chatterbot  questions from the PyPI package chatterbot-corpus 1.3.3 (BSD licence),
              turned into pairs by fixed rewrites;
  wordnet     example sentences of WordNet 3.0 (Debian package wordnet-base, WordNet 3.0
              licence), with a word replaced by a synonym from its synset (should hit) or by
              a sister term, a co-hyponym (a trap).

The split is by family (a template family, a chatterbot topic file, a WordNet synset), with a
fixed seed, half of each source's families in each part. The output is deterministic: running
the script again writes the same files.

Usage: python3 build.py [--wordnet /usr/share/wordnet] [--chatterbot DIR]
  Without --chatterbot the script pip-downloads chatterbot-corpus==1.3.3 into a temp folder.
  Needs PyYAML. Writes ../../data/quality/{tune,test}.tsv.
"""

import argparse
import hashlib
import os
import random
import re
import subprocess
import sys
import tempfile
import zipfile

SEED = 15
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "..", "data", "quality"))

HIT_KINDS = {"hit": "paraphrase"}
TRAP_KINDS = {
    "neg": "negation",
    "opp": "opposite",
    "ent": "entity",
    "num": "number",
    "date": "date",
    "scope": "scope",
    "role": "role",
}


def stable_rng(*parts):
    digest = hashlib.sha256(("/".join(map(str, (SEED,) + parts))).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# ---------------------------------------------------------------- near-repeats


def near_repeats(text, rng, count):
    """Prompts that say the same thing as `text` with surface changes only."""
    bare = text.rstrip("?.! ")
    words = bare.split(" ")
    options = [
        bare.lower(),
        "Hey, " + bare[0].lower() + bare[1:] + "?",
        "Quick question: " + bare[0].lower() + bare[1:],
        bare + ", please",
        bare + "??",
        "  " + bare + "  thanks",
        "Can you help? " + bare,
    ]
    # One typo: two inner letters of the longest plain lower-case word swapped.
    plain = [i for i, w in enumerate(words) if w.isalpha() and w.islower() and len(w) >= 6]
    if plain:
        i = max(plain, key=lambda j: (len(words[j]), -j))
        w = words[i]
        k = 2 if len(w) > 6 else 1
        typo = w[:k] + w[k + 1] + w[k] + w[k + 2 :]
        options.append(" ".join(words[:i] + [typo] + words[i + 1 :]))
    rng.shuffle(options)
    return options[:count]


# ---------------------------------------------------------------- templates


def parse_templates(path):
    families = []
    fam = None
    for raw in open(path, encoding="utf-8"):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("== "):
            ident, domain = [x.strip() for x in line[3:].split("|")]
            fam = {"id": ident, "domain": domain, "slots": {}, "base": None, "lines": []}
            families.append(fam)
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if key.startswith("slot "):
            fam["slots"][key[5:].strip()] = [v.strip() for v in value.split(";")]
        elif key == "base":
            fam["base"] = value
        elif key in HIT_KINDS or key in TRAP_KINDS:
            fam["lines"].append((key, value))
        else:
            sys.exit(f"templates.txt: unknown line {line!r}")
    return families


def fill(text, slots, i):
    def sub(m):
        name, nxt = m.group(1), m.group(2)
        values = slots[name]
        return values[(i + (1 if nxt else 0)) % len(values)]

    return re.sub(r"\{(\w+)(~?)\}", sub, text)


def template_pairs(path, source="templates"):
    out = []
    for fam in parse_templates(path):
        n = max(len(v) for v in fam["slots"].values()) if fam["slots"] else 1
        for i in range(n):
            base = fill(fam["base"], fam["slots"], i)
            rng = stable_rng("templates", fam["id"], i)
            for kind, text in fam["lines"]:
                new = fill(text, fam["slots"], i)
                if kind in HIT_KINDS:
                    out.append((fam["id"], HIT_KINDS[kind], "hit", base, new))
                else:
                    out.append((fam["id"], TRAP_KINDS[kind], "miss", base, new))
            for new in near_repeats(base, rng, 2):
                out.append((fam["id"], "near_repeat", "hit", base, new))
    return [(source,) + p for p in out]


# ---------------------------------------------------------------- chatterbot-corpus

AUX_NEG = {
    "is": "isn't", "are": "aren't", "was": "wasn't", "were": "weren't", "do": "don't",
    "does": "doesn't", "did": "didn't", "can": "can't", "could": "couldn't",
    "will": "won't", "would": "wouldn't", "should": "shouldn't", "have": "haven't",
    "has": "hasn't",
}


def chatterbot_dir(given):
    if given:
        return given
    tmp = tempfile.mkdtemp()
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
         "chatterbot-corpus==1.3.3"],
        check=True,
    )
    wheel = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
    with zipfile.ZipFile(os.path.join(tmp, wheel)) as z:
        z.extractall(tmp)
    return os.path.join(tmp, "chatterbot_corpus", "data", "english")


def chatterbot_questions(folder):
    import yaml

    by_file = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".yml"):
            continue
        data = yaml.safe_load(open(os.path.join(folder, name), encoding="utf-8"))
        seen = []
        for conv in data.get("conversations", []):
            if not conv or not isinstance(conv[0], str):
                continue
            q = " ".join(conv[0].split())
            words = q.rstrip("?.!").split()
            if not (3 <= len(words) <= 16) or not q.isascii() or q in seen:
                continue
            first = words[0].lower()
            if q.endswith("?") or first in AUX_NEG or first in (
                "what", "who", "where", "when", "why", "how", "which",
            ):
                seen.append(q)
        by_file[name[:-4]] = seen
    return by_file


def rewrite(q):
    """A restructured question with the same meaning, or None."""
    bare = q.rstrip("?.! ")
    m = re.match(r"(?i)^what (is|are|was|were) (.+)$", bare)
    if m:
        return f"Can you tell me what {m.group(2)} {m.group(1).lower()}?"
    m = re.match(r"(?i)^who (is|was|were) (.+)$", bare)
    if m:
        return f"Do you know who {m.group(2)} {m.group(1).lower()}?"
    m = re.match(r"(?i)^where (is|are) (.+)$", bare)
    if m:
        return f"Tell me where {m.group(2)} {m.group(1).lower()}"
    m = re.match(r"(?i)^how (do|can) (i|you) (.+)$", bare)
    if m:
        return f"What's the way to {m.group(3)}?"
    m = re.match(r"(?i)^which (.+)$", bare)
    if m:
        return f"I'd like to know which {m.group(1)}"
    return None


def negate(q):
    """A yes/no or why question turned negative ("Is it" -> "Isn't it"), or None."""
    words = q.split(" ")
    first = 1 if words[0].lower() == "why" else 0
    for i, w in enumerate(words[first : first + 1], start=first):
        lw = w.lower()
        if lw in AUX_NEG and words[i + 1 : i + 2] != ["not"]:
            neg = AUX_NEG[lw]
            words[i] = neg[0].upper() + neg[1:] if w[0].isupper() else neg
            return " ".join(words)
    return None


def chatterbot_pairs(folder):
    by_file = chatterbot_questions(folder)
    # Capitalised names from the whole corpus, for entity swaps.
    names = sorted(
        {
            w.strip("?,.!'\"")
            for qs in by_file.values()
            for q in qs
            for w in q.split()[1:]
            if w[:1].isupper() and w.strip("?,.!'\"").isalpha() and w != "I"
        }
    )
    out = []
    for topic, questions in by_file.items():
        for n, q in enumerate(questions):
            rng = stable_rng("chatterbot", topic, n)
            trap = None
            digits = re.search(r"\d+", q)
            caps = [
                w.strip("?,.!'\"")
                for w in q.split()[1:]
                if w[:1].isupper() and w.strip("?,.!'\"").isalpha() and w != "I"
            ]
            if digits:
                value = int(digits.group())
                other = str(value + 1 if value > 1900 else value * 10 if value else 1)
                trap = ("number", q[: digits.start()] + other + q[digits.end() :])
            elif caps:
                old = rng.choice(caps)
                new = rng.choice([x for x in names if x != old and len(x) > 2])
                trap = ("entity", q.replace(old, new, 1))
            else:
                neg = negate(q)
                if neg:
                    trap = ("negation", neg)
            if trap is None:
                continue
            hit = rewrite(q)
            kind = "paraphrase"
            if hit is None:
                hit, kind = near_repeats(q, rng, 1)[0], "near_repeat"
            # Ten questions of one topic file make a family (a whole file would leave the
            # parts lopsided: one file holds half the questions).
            family = f"chatterbot-{topic}-{n // 10:03}"
            out.append(("chatterbot", family, kind, "hit", q, hit))
            out.append(("chatterbot", family, trap[0], "miss", q, trap[1]))
    return out


# ---------------------------------------------------------------- WordNet


def read_wordnet(folder, pos):
    synsets = {}
    for line in open(os.path.join(folder, f"data.{pos}"), encoding="latin-1"):
        if line.startswith("  "):
            continue
        data, _, gloss = line.partition(" | ")
        f = data.split()
        offset, w_cnt = f[0], int(f[3], 16)
        words = [f[4 + 2 * i].lower() for i in range(w_cnt)]
        k = 4 + 2 * w_cnt
        p_cnt = int(f[k])
        pointers = [(f[k + 1 + 4 * j], f[k + 2 + 4 * j]) for j in range(p_cnt)]
        examples = re.findall(r'"([^"]+)"', gloss)
        synsets[offset] = {"words": words, "pointers": pointers, "examples": examples}
    return synsets


def primary_senses(folder):
    """(lemma, offset) pairs where the synset is the lemma's most frequent sense and the
    lemma occurs in WordNet's sense-tagged corpus."""
    primary = set()
    for pos in ("noun", "verb"):
        for line in open(os.path.join(folder, f"index.{pos}"), encoding="latin-1"):
            if line.startswith("  "):
                continue
            f = line.split()
            p_cnt = int(f[3])
            # lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offsets (by frequency)
            # Words never seen in the sense-tagged corpus are rare ("bombilation"): skip.
            if int(f[4 + p_cnt + 1]) > 0:
                primary.add((f[0].lower(), f[4 + p_cnt + 2]))
    return primary


def wordnet_pairs(folder, want=330):
    out = []
    primary = primary_senses(folder)
    for pos in ("noun", "verb"):
        syn = read_wordnet(folder, pos)
        candidates = []
        for offset, s in sorted(syn.items()):
            # Only words whose most frequent sense is this synset: rare senses make poor
            # synonyms ("framework" / "fabric").
            singles = list(
                dict.fromkeys(
                    w for w in s["words"] if w.isalpha() and (w, offset) in primary
                )
            )
            if len(singles) < 2:
                continue
            for ex in s["examples"]:
                if not (4 <= len(ex.split()) <= 16) or not ex.isascii():
                    continue
                used = [w for w in singles if re.search(rf"\b{w}\b", ex)]
                if not used:
                    continue
                target = used[0]
                synonym = next(w for w in singles if w != target)
                # Sister terms: other hyponyms of this synset's hypernyms.
                sisters = []
                for sym, hyper in s["pointers"]:
                    if sym != "@" or hyper not in syn:
                        continue
                    for sym2, sib in syn[hyper]["pointers"]:
                        if sym2 == "~" and sib != offset and sib in syn:
                            sisters += [
                                w for w in syn[sib]["words"]
                                if w.isalpha() and w not in singles and (w, sib) in primary
                            ]
                if not sisters:
                    continue
                candidates.append((pos, offset, ex, target, synonym, sorted(set(sisters))))
                break
        rng = stable_rng("wordnet", pos)
        rng.shuffle(candidates)
        for pos_, offset, ex, target, synonym, sisters in candidates[: want // 2]:
            sister = stable_rng("wordnet-sister", offset).choice(sisters)
            family = f"wordnet-{pos_}-{offset}"
            hit = re.sub(rf"\b{target}\b", synonym, ex, count=1)
            trap = re.sub(rf"\b{target}\b", sister, ex, count=1)
            out.append(("wordnet", family, "paraphrase", "hit", ex, hit))
            out.append(("wordnet", family, "entity", "miss", ex, trap))
    return out


# ---------------------------------------------------------------- split and write


def split(pairs):
    parts = {"tune": [], "test": []}
    by_source = {}
    for p in pairs:
        by_source.setdefault(p[0], {}).setdefault(p[1], []).append(p)
    for source in sorted(by_source):
        families = sorted(by_source[source])
        random.Random(f"{SEED}-{source}").shuffle(families)
        half = len(families) // 2
        for i, fam in enumerate(families):
            parts["tune" if i < half else "test"].extend(by_source[source][fam])
    return parts


HEADER = """# Labelled prompt pairs for the semantic cache's quality evaluation: the {part} part.
# Generated by crates/semantic-cache/scripts/quality-data/build.py (seed {seed}); do not edit.
# Columns (tab-separated): source, family, category, expected, cached prompt, new prompt.
# expected = hit: the cached answer is right for the new prompt; miss: serving it is wrong.
# The tuning, threshold and test parts share no family. {note}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    ap.add_argument("--chatterbot")
    args = ap.parse_args()
    pairs = template_pairs(os.path.join(HERE, "templates.txt"))
    pairs += chatterbot_pairs(chatterbot_dir(args.chatterbot))
    pairs += wordnet_pairs(args.wordnet)
    seen, unique = set(), []
    for p in pairs:
        key = (p[4].strip().lower(), p[5].strip().lower())
        if p[4] != p[5] and key not in seen:
            seen.add(key)
            unique.append(p)
    parts = split(unique)
    # The threshold part: its own families (templates-threshold.txt), none in the other two
    # parts, deduplicated after them so that the tuning and test parts stay as they were.
    parts["threshold"] = []
    for p in template_pairs(os.path.join(HERE, "templates-threshold.txt"), "threshold"):
        key = (p[4].strip().lower(), p[5].strip().lower())
        if p[4] != p[5] and key not in seen:
            seen.add(key)
            parts["threshold"].append(p)
    os.makedirs(OUT, exist_ok=True)
    notes = {
        "tune": "Guard rules and other levers may be chosen by looking at this part and its mistakes.",
        "test": "Nothing is tuned on this part: report its figures, do not read its mistakes.",
        "threshold": "Only the threshold and span floor are chosen on this part, by a rule stated"
        " in advance; no guard rule is written against its mistakes.",
    }
    for part, rows in parts.items():
        with open(os.path.join(OUT, f"{part}.tsv"), "w", encoding="utf-8") as f:
            f.write(HEADER.format(part=part, seed=SEED, note=notes[part]))
            for row in rows:
                assert all("\t" not in x and "\n" not in x for x in row), row
                f.write("\t".join(row) + "\n")
    for part, rows in parts.items():
        counts = {}
        for r in rows:
            counts[(r[0], r[3])] = counts.get((r[0], r[3]), 0) + 1
        print(part, len(rows), sorted(counts.items()))


if __name__ == "__main__":
    main()
