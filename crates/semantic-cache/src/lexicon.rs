//! Word knowledge for the guard: stems, words that carry no content, and opposites (a table
//! generated from WordNet 3.0's antonym pointers by `scripts/wordnet-antonyms.py`, plus
//! negating prefixes and suffixes). Pure logic; the table is parsed once, on first use.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// The generated table: `word opposite` a line, `#` comments.
const ANTONYM_TABLE: &str = include_str!("data/antonyms.txt");

/// The generated table of words that say the same thing (`scripts/wordnet-synonyms.py`):
/// `word synonym` a line, `=form base` for an irregular form, `#` comments.
const SYNONYM_TABLE: &str = include_str!("data/synonyms.txt");

/// Words that say how something is asked, not what is asked: articles, auxiliaries,
/// pronouns, request wording ("please", "tell me", "what's the way to"). Two prompts that
/// differ only in these ask the same thing.
const FUNCTION_WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "am",
    "do",
    "does",
    "did",
    "done",
    "doing",
    "can",
    "could",
    "would",
    "should",
    "will",
    "shall",
    "may",
    "might",
    "must",
    "to",
    "of",
    "in",
    "on",
    "at",
    "for",
    "with",
    "and",
    "or",
    "by",
    "as",
    "so",
    "if",
    "it",
    "its",
    "this",
    "that",
    "these",
    "those",
    "there",
    "here",
    "then",
    "than",
    "i",
    "me",
    "im",
    "ive",
    "id",
    "ill",
    "you",
    "we",
    "us",
    "they",
    "them",
    "he",
    "she",
    "him",
    "her",
    "his",
    "hers",
    "what",
    "whats",
    "which",
    "who",
    "whom",
    "whose",
    "how",
    "hows",
    "when",
    "where",
    "why",
    "please",
    "pls",
    "thanks",
    "thank",
    "hey",
    "hi",
    "hello",
    "quick",
    "question",
    "tell",
    "know",
    "explain",
    "help",
    "want",
    "wanna",
    "like",
    "need",
    "get",
    "got",
    "give",
    "show",
    "find",
    "way",
    "ways",
    "steps",
    "step",
    "process",
    "lets",
    "let",
    "say",
    "said",
    "just",
    "really",
    "also",
    "any",
    "about",
    "into",
    "out",
    "up",
    "from",
    "over",
    "some",
    "such",
    "one",
    "ones",
    "thing",
    "things",
    "kind",
    "sort",
    "type",
    "much",
    "many",
    "more",
    "most",
    "very",
    "yet",
    "still",
    "ever",
    "okay",
    "ok",
    "alright",
    "right",
    "possible",
    "able",
    "go",
    "going",
    "make",
    "making",
    "made",
    "use",
    "using",
    "used",
    "something",
    "anything",
    "everything",
    "someone",
    "anyone",
    "exactly",
    "actually",
    "basically",
    "currently",
    "now",
    "mine",
    "yours",
    "our",
    "ours",
    "their",
    "theirs",
    "your",
    "my",
    "myself",
    "yourself",
    "itself",
    "via",
    "per",
    "what's",
    "whats",
    "re",
    "ll",
    "ve",
    "d",
    "s",
    "t",
    "m",
    "o",
    "don",
    "doesn",
    "isn",
    "aren",
    "wasn",
    "can't",
];

/// Prefixes that turn a word into its opposite (`safe` / `unsafe`, `like` / `dislike`).
const NEGATING_PREFIXES: &[&str] = &["un", "in", "im", "il", "ir", "dis", "non", "non-", "anti"];

/// Whether `word` carries no content of its own (see [`FUNCTION_WORDS`]).
pub(crate) fn is_function_word(word: &str) -> bool {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| FUNCTION_WORDS.iter().copied().collect())
        .contains(word)
}

fn antonyms() -> &'static HashMap<&'static str, Vec<&'static str>> {
    static TABLE: OnceLock<HashMap<&'static str, Vec<&'static str>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut map: HashMap<&'static str, Vec<&'static str>> = HashMap::new();
        for line in ANTONYM_TABLE.lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some((a, b)) = line.split_once(' ') {
                map.entry(a).or_default().push(b);
                map.entry(b).or_default().push(a);
            }
        }
        map
    })
}

struct Synonyms {
    pairs: HashMap<&'static str, Vec<&'static str>>,
    irregular: HashMap<&'static str, &'static str>,
}

fn synonyms() -> &'static Synonyms {
    static TABLE: OnceLock<Synonyms> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Synonyms {
            pairs: HashMap::new(),
            irregular: HashMap::new(),
        };
        for line in SYNONYM_TABLE.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((a, b)) = line.split_once(' ') else {
                continue;
            };
            if let Some(form) = a.strip_prefix('=') {
                table.irregular.insert(form, b);
                continue;
            }
            table.pairs.entry(a).or_default().push(b);
            table.pairs.entry(b).or_default().push(a);
        }
        table
    })
}

/// Whether `a` and `b` say the same thing by the WordNet table: a shared synset that is the
/// commonest sense of both (`child` / `kid`, `buy` / `purchase`), in any of their forms
/// (`children` / `kids`, `bought` / `purchased`).
pub(crate) fn are_synonyms(a: &str, b: &str) -> bool {
    if a == b {
        return false;
    }
    let table = synonyms();
    let with_irregular = |w: &str| {
        let mut f = forms(w);
        if let Some(base) = table.irregular.get(w) {
            f.push((*base).to_owned());
        }
        f
    };
    let (fa, fb) = (with_irregular(a), with_irregular(b));
    fa.iter().any(|x| {
        table
            .pairs
            .get(x.as_str())
            .is_some_and(|list| fb.iter().any(|y| list.contains(&y.as_str())))
    })
}

/// A crude English stem: plural, past and gerund endings stripped, a final `e` dropped
/// (`takes`, `taking`, `taken`… are not all met, but `closed`/`close`/`closes` are).
pub(crate) fn stem(word: &str) -> String {
    let w = word;
    let n = w.len();
    let mut s = if n > 4 && w.ends_with("ies") {
        format!("{}y", &w[..n - 3])
    } else if n > 5 && w.ends_with("ing") {
        undouble(&w[..n - 3])
    } else if n > 4 && w.ends_with("ied") {
        format!("{}y", &w[..n - 3])
    } else if n > 4 && w.ends_with("ed") {
        undouble(&w[..n - 2])
    } else if n > 4
        && (w.ends_with("sses") || w.ends_with("xes") || w.ends_with("ches") || w.ends_with("shes"))
    {
        w[..n - 2].to_owned()
    } else if n > 3 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") {
        w[..n - 1].to_owned()
    } else {
        w.to_owned()
    };
    if s.len() > 3 && s.ends_with('e') {
        s.pop();
    }
    s
}

fn undouble(s: &str) -> String {
    let b = s.as_bytes();
    if b.len() > 3
        && b[b.len() - 1] == b[b.len() - 2]
        && !matches!(b[b.len() - 1], b'l' | b's' | b'z')
    {
        s[..s.len() - 1].to_owned()
    } else {
        s.to_owned()
    }
}

/// Spellings a word may have in the table: itself and its base forms.
fn forms(word: &str) -> Vec<String> {
    let mut out = vec![word.to_owned()];
    let n = word.len();
    let mut push = |s: String| {
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    };
    if n > 3 && word.ends_with('s') {
        push(word[..n - 1].to_owned());
    }
    if n > 4 && word.ends_with("es") {
        push(word[..n - 2].to_owned());
    }
    if n > 4 && (word.ends_with("ies") || word.ends_with("ied")) {
        push(format!("{}y", &word[..n - 3]));
    }
    if n > 3 && word.ends_with("ed") {
        push(word[..n - 2].to_owned());
        push(word[..n - 1].to_owned());
        push(undouble(&word[..n - 2]));
    }
    if n > 5 && word.ends_with("ing") {
        push(word[..n - 3].to_owned());
        push(format!("{}e", &word[..n - 3]));
        push(undouble(&word[..n - 3]));
    }
    if n > 4 && word.ends_with("ly") {
        push(word[..n - 2].to_owned());
    }
    out
}

/// Whether `a` and `b` are opposites: a pair of the WordNet table (in any of their forms),
/// one the other with a negating prefix (`safe`/`unsafe`, `like`/`dislike`), or `-ful`
/// against `-less` (`careful`/`careless`).
pub(crate) fn are_opposites(a: &str, b: &str) -> bool {
    if a == b {
        return false;
    }
    let (fa, fb) = (forms(a), forms(b));
    let table = antonyms();
    for x in &fa {
        if let Some(opposites) = table.get(x.as_str())
            && fb.iter().any(|y| opposites.contains(&y.as_str()))
        {
            return true;
        }
    }
    let prefixed = |x: &str, y: &str| {
        y.len() >= 3
            && NEGATING_PREFIXES
                .iter()
                .any(|p| x.strip_prefix(p).is_some_and(|rest| rest == y))
    };
    // The Greek `a-` only before longer words (`synchrony` / `asynchrony`, `typical` /
    // `atypical`; not `broad` / `abroad`).
    let alpha = |x: &str, y: &str| y.len() >= 6 && x.strip_prefix('a') == Some(y);
    for x in &fa {
        for y in &fb {
            if prefixed(x, y) || prefixed(y, x) || alpha(x, y) || alpha(y, x) {
                return true;
            }
        }
    }
    let suffix_pair = |x: &str, y: &str| {
        x.strip_suffix("ful")
            .zip(y.strip_suffix("less"))
            .is_some_and(|(p, q)| p == q && !p.is_empty())
    };
    suffix_pair(a, b) || suffix_pair(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opposites_from_the_table_prefixes_and_suffixes() {
        assert!(are_opposites("open", "closed"));
        assert!(are_opposites("closed", "open"));
        assert!(are_opposites("allow", "deny"));
        assert!(are_opposites("allowed", "denied"));
        assert!(are_opposites("safe", "unsafe"));
        assert!(are_opposites("like", "dislike"));
        assert!(are_opposites("careful", "careless"));
        assert!(are_opposites("synchrony", "asynchrony"));
        assert!(!are_opposites("broad", "abroad"));
        assert!(are_opposites("buying", "selling"));
        assert!(!are_opposites("change", "update"));
        assert!(!are_opposites("open", "open"));
        assert!(!are_opposites("in", "i"));
    }

    #[test]
    fn stems_meet_their_inflections() {
        assert_eq!(stem("closes"), stem("close"));
        assert_eq!(stem("closed"), stem("close"));
        assert_eq!(stem("watering"), stem("water"));
        assert_eq!(stem("babies"), stem("baby"));
        assert_eq!(stem("planning"), stem("plan"));
    }

    #[test]
    fn the_table_is_loaded() {
        assert!(antonyms().len() > 1000);
        assert!(synonyms().pairs.len() > 1000);
    }

    #[test]
    fn synonyms_from_the_table_in_any_form() {
        assert!(are_synonyms("child", "kid"));
        assert!(are_synonyms("children", "kids"));
        assert!(are_synonyms("purchase", "buy"));
        assert!(are_synonyms("purchased", "bought"));
        assert!(!are_synonyms("child", "adult"));
        assert!(!are_synonyms("buy", "sell"));
        assert!(!are_synonyms("kid", "kid"));
    }
}
