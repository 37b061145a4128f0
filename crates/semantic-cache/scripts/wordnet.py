"""Reading WordNet 3.0's database files (Debian package `wordnet-base`, /usr/share/wordnet),
for the scripts that generate the guard's word tables (wordnet-antonyms.py,
wordnet-synonyms.py). Standard library only.

WordNet 3.0 Copyright 2006 by Princeton University; its licence is reproduced in each
generated file's header (`LICENCE_HEADER`) and in data/quality/README.md.
"""

import os

# WordNet's file suffix for each part of speech, and its one-letter code.
POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}

LICENCE_HEADER = (
    "# WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.\n"
    "# Permission to use, copy, modify and distribute this database for any purpose\n"
    "# and without fee or royalty is granted provided this notice appears on all copies.\n"
    '# THE DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO\n'
    "# REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. The full licence is in\n"
    "# crates/semantic-cache/data/quality/README.md.\n"
)


def lemmas(folder, pos):
    """The entries of index.<pos>: (lemma in lower case, times it was seen in the
    sense-tagged corpus, its synset offsets, commonest sense first)."""
    for line in open(os.path.join(folder, f"index.{pos}"), encoding="latin-1"):
        if line.startswith("  "):
            continue  # the licence at the top of the file
        f = line.split()
        synset_cnt, p_cnt = int(f[2]), int(f[3])
        tagged = int(f[4 + p_cnt + 1])
        offsets = f[4 + p_cnt + 2 : 4 + p_cnt + 2 + synset_cnt]
        yield f[0].lower(), tagged, offsets


def synsets(folder, pos):
    """data.<pos> as {offset: (synset type, words in lower case, pointers)}, a pointer being
    (symbol, target offset, target pos, source word number, target word number), word
    numbers from 1 (0: the whole synset)."""
    out = {}
    for line in open(os.path.join(folder, f"data.{pos}"), encoding="latin-1"):
        if line.startswith("  "):
            continue
        f = line.split(" | ")[0].split()
        offset, ss_type, w_cnt = f[0], f[2], int(f[3], 16)
        # Adjective markers: "beautiful(a)" -> "beautiful".
        words = [f[4 + 2 * i].lower().split("(")[0] for i in range(w_cnt)]
        k = 4 + 2 * w_cnt
        pointers = []
        for j in range(int(f[k])):
            sym, target, tpos, st = f[k + 1 + 4 * j : k + 5 + 4 * j]
            pointers.append((sym, target, tpos, int(st[:2], 16), int(st[2:], 16)))
        out[offset] = (ss_type, words, pointers)
    return out
