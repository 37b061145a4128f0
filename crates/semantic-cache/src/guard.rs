//! The lexical guard: a veto on semantic hits between prompts that embed close together but
//! ask different things ("Cancel my subscription" / "Don't cancel my subscription",
//! "Refund 20 dollars" / "Refund 200 dollars", "USD to EUR" / "EUR to USD"). Pure logic.
//!
//! Its types live here only (one path per type), not also at the crate root:
//!
//! ```compile_fail
//! use palisade_semantic_cache::GuardConfig;
//! ```

use serde::{Deserialize, Serialize};

use crate::embed::Embedder;
use crate::error::Result;
use crate::lexicon;

/// Which checks the guard runs. All are on by default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GuardConfig {
    /// Veto when the number of negations differs (`not`, `never`, `don't`, `without`, …).
    pub negation: bool,
    /// Veto when numbers, amounts, ordinals, dates, weekdays, months, relative days
    /// (`today`/`tomorrow`), units or currencies differ.
    pub numbers: bool,
    /// Veto when the sequence of named entities and identifiers differs (capitalised names
    /// past the start of a sentence, acronyms, `snake_case`, `a.b`, `x@y`, `#123`, `AB-12`,
    /// quoted text).
    pub entities: bool,
    /// Veto when one prompt says a word and the other its opposite (`enable`/`disable`,
    /// `increase`/`decrease`, `before`/`after`, `upload`/`download`, …).
    pub antonyms: bool,
    /// Veto when quantifiers (`all`, `every`, `only`, `some`, …) differ, or when both
    /// prompts name whose thing it is and the owners differ (`my` / `their`).
    pub scope: bool,
    /// Veto when one prompt says a word and the other its opposite according to the
    /// WordNet 3.0 antonym table shipped with the crate (`open`/`closed`, `allow`/`deny`,
    /// `buy`/`sell`, about 2,100 pairs) or a negating prefix or suffix (`safe`/`unsafe`,
    /// `like`/`dislike`, `careful`/`careless`). Needs `antonyms`.
    #[serde(default = "yes")]
    pub lexicon: bool,
    /// Veto when the same words play other roles: two words both prompts share come in the
    /// other order with a role word (`from`, `to`, `into`, `than`, `over`, `before`, …)
    /// between them in both (`from checking to savings` / `from savings to checking`).
    #[serde(default = "yes")]
    pub roles: bool,
    /// Compare what differs: when each prompt has content words the other lacks
    /// (`for children` / `for adults`), compare the two differing spans with
    /// [`Embedder::span_similarity`] and veto unless they are at least
    /// [`substitution_similarity`](Self::substitution_similarity) alike (a synonym passes,
    /// another thing does not). Runs only for a candidate that passed every other check.
    #[serde(default = "yes")]
    pub substitutions: bool,
    /// Lowest cosine similarity of the differing spans for a substitution to pass; `None`
    /// uses the embedder's [`Embedder::recommended_span_similarity`].
    #[serde(default)]
    pub substitution_similarity: Option<f32>,
}

fn yes() -> bool {
    true
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            negation: true,
            numbers: true,
            entities: true,
            antonyms: true,
            scope: true,
            lexicon: true,
            roles: true,
            substitutions: true,
            substitution_similarity: None,
        }
    }
}

impl GuardConfig {
    setters! {
        plain {
            negation: bool,
            numbers: bool,
            entities: bool,
            antonyms: bool,
            scope: bool,
            lexicon: bool,
            roles: bool,
            substitutions: bool,
        }
        optional { substitution_similarity: f32 }
    }

    /// A guard that never vetoes.
    pub fn disabled() -> Self {
        Self {
            negation: false,
            numbers: false,
            entities: false,
            antonyms: false,
            scope: false,
            lexicon: false,
            roles: false,
            substitutions: false,
            substitution_similarity: None,
        }
    }
}

/// Why the guard vetoed a hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VetoReason {
    /// Different negations.
    Negation,
    /// Different numbers, amounts, dates, units or currencies.
    Number,
    /// Different named entities or identifiers (or the same in another order).
    Entity,
    /// A word in one prompt and its opposite in the other.
    Antonym,
    /// Different quantifiers or owners.
    Scope,
    /// The same words in other roles (`from A to B` / `from B to A`).
    Role,
    /// A content word replaced by one that means something else (`for children` /
    /// `for adults`), judged by embedding the differing spans.
    Substitution,
}

impl VetoReason {
    /// A stable lower-case name (used as a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Negation => "negation",
            Self::Number => "number",
            Self::Entity => "entity",
            Self::Antonym => "antonym",
            Self::Scope => "scope",
            Self::Role => "role",
            Self::Substitution => "substitution",
        }
    }
}

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "without", "none", "nobody", "nothing", "neither", "nor", "nowhere",
    "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont",
    "wouldnt", "shouldnt", "couldnt", "havent", "hasnt", "hadnt", "mustnt", "neednt",
];

const NUMBER_WORDS: &[(&str, &str)] = &[
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("thirteen", "13"),
    ("fourteen", "14"),
    ("fifteen", "15"),
    ("sixteen", "16"),
    ("seventeen", "17"),
    ("eighteen", "18"),
    ("nineteen", "19"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("sixty", "60"),
    ("seventy", "70"),
    ("eighty", "80"),
    ("ninety", "90"),
    ("hundred", "x100"),
    ("thousand", "x1000"),
    ("million", "x1e6"),
    ("billion", "x1e9"),
    ("dozen", "12"),
    ("half", "0.5"),
    ("quarter", "0.25"),
    ("twice", "x2"),
    ("double", "x2"),
    ("triple", "x3"),
    ("first", "#1"),
    ("third", "#3"),
    ("fourth", "#4"),
    ("fifth", "#5"),
    ("last", "#last"),
    ("next", "#next"),
    ("previous", "#prev"),
];

const TIME_WORDS: &[&str] = &[
    "today",
    "tomorrow",
    "yesterday",
    "tonight",
    "morning",
    "afternoon",
    "evening",
    "night",
    "weekend",
    "weekday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "annual",
    "annually",
    "hourly",
    "quarterly",
    "noon",
    "midnight",
    "am",
    "pm",
    "ago",
    "spring",
    "summer",
    "autumn",
    "fall",
    "winter",
];

/// Words that say "per unit of time", folded to the unit.
const RATE_WORDS: &[(&str, &str)] = &[
    ("hourly", "h"),
    ("daily", "d"),
    ("weekly", "wk"),
    ("monthly", "mo"),
    ("yearly", "y"),
    ("annual", "y"),
    ("annually", "y"),
];

/// Units and currencies, folded to one spelling (plural `s` is stripped before lookup).
const UNIT_WORDS: &[(&str, &str)] = &[
    ("second", "s"),
    ("sec", "s"),
    ("minute", "min"),
    ("min", "min"),
    ("hour", "h"),
    ("hr", "h"),
    ("day", "d"),
    ("week", "wk"),
    ("month", "mo"),
    ("year", "y"),
    ("yr", "y"),
    ("decade", "decade"),
    ("century", "century"),
    ("km", "km"),
    ("kilometer", "km"),
    ("kilometre", "km"),
    ("mile", "mi"),
    ("meter", "m"),
    ("metre", "m"),
    ("kg", "kg"),
    ("kilo", "kg"),
    ("kilogram", "kg"),
    ("gram", "g"),
    ("pound", "lb"),
    ("lb", "lb"),
    ("gb", "gb"),
    ("mb", "mb"),
    ("tb", "tb"),
    ("kb", "kb"),
    ("percent", "%"),
    ("dollar", "usd"),
    ("usd", "usd"),
    ("buck", "usd"),
    ("euro", "eur"),
    ("eur", "eur"),
    ("gbp", "gbp"),
    ("yen", "jpy"),
    ("jpy", "jpy"),
    ("cent", "cent"),
    ("celsius", "c"),
    ("fahrenheit", "f"),
    ("liter", "l"),
    ("litre", "l"),
    ("calorie", "kcal"),
    ("kcal", "kcal"),
];

const QUANTIFIERS: &[&str] = &[
    "all",
    "every",
    "each",
    "any",
    "some",
    "only",
    "both",
    "entire",
    "whole",
    "single",
    "everyone",
    "everybody",
    "anyone",
    "anybody",
    "most",
    "least",
    "few",
    "several",
    "either",
    "just",
];

const OWNERS: &[(&str, &str)] = &[
    ("i", "self"),
    ("me", "self"),
    ("my", "self"),
    ("mine", "self"),
    ("myself", "self"),
    ("we", "we"),
    ("us", "we"),
    ("our", "we"),
    ("ours", "we"),
    ("you", "you"),
    ("your", "you"),
    ("yours", "you"),
    ("he", "other"),
    ("him", "other"),
    ("his", "other"),
    ("she", "other"),
    ("her", "other"),
    ("they", "other"),
    ("them", "other"),
    ("their", "other"),
    ("team", "team"),
    ("company", "org"),
    ("organization", "org"),
    ("organisation", "org"),
];

const ANTONYMS: &[(&str, &str)] = &[
    ("enabl", "disabl"),
    ("increas", "decreas"),
    ("before", "after"),
    ("above", "below"),
    ("max", "min"),
    ("maximum", "minimum"),
    ("add", "remov"),
    ("allow", "block"),
    ("allow", "den"),
    ("includ", "exclud"),
    ("open", "clos"),
    ("start", "stop"),
    ("buy", "sell"),
    ("upload", "download"),
    ("import", "export"),
    ("encrypt", "decrypt"),
    ("lock", "unlock"),
    ("subscrib", "unsubscrib"),
    ("cheap", "expensiv"),
    ("high", "low"),
    ("fast", "slow"),
    ("best", "worst"),
    ("more", "less"),
    ("more", "fewer"),
    ("win", "los"),
    ("accept", "reject"),
    ("true", "false"),
    ("push", "pull"),
    ("send", "receiv"),
    ("hot", "cold"),
    ("larg", "small"),
    ("big", "small"),
    ("long", "short"),
    ("ascend", "descend"),
    ("upgrad", "downgrad"),
    ("install", "uninstall"),
    ("follow", "unfollow"),
    ("mut", "unmut"),
    ("paus", "resum"),
    ("arriv", "depart"),
    ("deposit", "withdraw"),
    ("credit", "debit"),
    ("inbound", "outbound"),
    ("north", "south"),
    ("east", "west"),
    ("left", "right"),
    ("gain", "los"),
    ("online", "offline"),
    ("public", "privat"),
    ("approv", "reject"),
    ("merg", "split"),
    ("creat", "delet"),
    ("show", "hid"),
    ("connect", "disconnect"),
    ("login", "logout"),
    ("in", "out"),
    ("on", "off"),
    ("up", "down"),
    ("earlier", "later"),
    ("older", "newer"),
    ("oldest", "newest"),
    ("visibl", "invisibl"),
    ("valid", "invalid"),
    ("success", "fail"),
];

/// How much lower the span similarity floor is for a substitution of several words on both
/// sides than for one word swapped for one ([`PromptFeatures::substitution_floor`]).
const RESTRUCTURED_SLACK: f32 = 0.15;

const SUFFIXES: &[&str] = &[
    "", "s", "e", "d", "ed", "es", "er", "est", "ing", "ped", "ping", "ly", "ion", "ions", "ied",
    "y", "t",
];

/// Words that give the words around them a role: swapping what stands on either side
/// changes the request (`from checking to savings`, `merge main into develop`).
const ROLE_WORDS: &[&str] = &[
    "from", "to", "into", "onto", "than", "versus", "vs", "over", "before", "after", "instead",
    "against", "by", "toward", "towards",
];

/// What the guard extracts from one prompt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromptFeatures {
    negations: usize,
    numbers: Vec<String>,
    entities: Vec<String>,
    words: Vec<String>,
    tokens: Vec<String>,
    quantifiers: Vec<&'static str>,
    owners: Vec<&'static str>,
    /// Content words: (token position, stem, word as written in lower case).
    content: Vec<(usize, String, String)>,
    /// Positions of role words.
    roles: Vec<usize>,
}

fn strip_apostrophes(word: &str) -> String {
    word.chars()
        .filter(|c| *c != '\'' && *c != '\u{2019}')
        .collect()
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, value: T) {
    if !list.contains(&value) {
        list.push(value);
    }
}

/// Whether `token` is a spelling of `stem` (stem plus one of a few English endings).
fn is_form_of(token: &str, stem: &str) -> bool {
    token
        .strip_prefix(stem)
        .is_some_and(|rest| SUFFIXES.contains(&rest))
}

impl PromptFeatures {
    /// Extract the features of `prompt`.
    pub fn extract(prompt: &str) -> Self {
        let mut f = Self::default();
        // Quoted text is an identifier as a whole.
        for (i, part) in prompt.split('"').enumerate() {
            if i % 2 == 1 && !part.trim().is_empty() {
                f.entities
                    .push(format!("\"{}\"", part.trim().to_lowercase()));
            }
        }
        let mut sentence_start = true;
        for raw in prompt.split_whitespace() {
            let ends_sentence = raw.ends_with(['.', '?', '!', ':', ';']);
            let token = raw.trim_matches(|c: char| {
                !(c.is_alphanumeric() || matches!(c, '#' | '$' | '€' | '£' | '%' | '@'))
            });
            let token =
                token.trim_end_matches(['%']).to_owned() + if raw.contains('%') { "%" } else { "" };
            let token = token.trim_matches('@');
            if token.is_empty() {
                sentence_start |= ends_sentence;
                continue;
            }
            f.scan_token(token, sentence_start);
            sentence_start = ends_sentence;
        }
        f
    }

    fn scan_token(&mut self, token: &str, sentence_start: bool) {
        let position = self.tokens.len();
        let lower = token.to_lowercase();
        self.tokens.push(strip_apostrophes(&lower));
        if let Some(stem) = lower
            .strip_suffix("'s")
            .or_else(|| lower.strip_suffix("’s"))
        {
            self.tokens.push(stem.to_owned());
        }
        let bare = strip_apostrophes(&lower);
        let bare = bare
            .strip_suffix("s")
            .filter(|_| lower.ends_with("'s") || lower.ends_with("’s"))
            .map_or(bare.clone(), str::to_owned);
        // "open or not?", "whether or not": a yes/no question, not a negation.
        let or_not = bare == "not"
            && self
                .tokens
                .get(position.wrapping_sub(1))
                .is_some_and(|t| t == "or");
        if (NEGATIONS.contains(&bare.as_str()) || lower.ends_with("n't") || lower.ends_with("n’t"))
            && !or_not
        {
            self.negations += 1;
        }
        // Currency symbols are amounts in a currency.
        let mut digits_part = lower.as_str();
        for (symbol, code) in [("$", "usd"), ("€", "eur"), ("£", "gbp")] {
            if lower.contains(symbol) {
                push_unique(&mut self.numbers, format!("unit:{code}"));
                digits_part = digits_part.trim_matches(|c: char| c.to_string() == symbol);
            }
        }
        let has_digit = lower.chars().any(|c| c.is_ascii_digit());
        let has_alpha = lower.chars().any(char::is_alphabetic);
        let inner_mark = token
            .trim_start_matches('#')
            .contains(['_', '.', '@', '/', ':', '#', '-']);
        if has_digit && !has_alpha {
            // A plain number, amount, date or time: "1,000" and "1000" are the same.
            let number: String = digits_part.chars().filter(|c| *c != ',').collect();
            let number = number.trim_start_matches('#');
            let number = number.strip_suffix(".00").unwrap_or(number);
            self.numbers.push(number.to_owned());
            return;
        }
        if has_digit && has_alpha {
            // "3pm", "10km", "2nd", "5x": split the number from a unit; otherwise an identifier.
            let split = lower.find(|c: char| !c.is_ascii_digit() && c != '.' && c != ',');
            if let Some(at) = split.filter(|at| *at > 0) {
                let (num, unit) = lower.split_at(at);
                let unit_known = matches!(unit, "st" | "nd" | "rd" | "th")
                    || TIME_WORDS.contains(&unit)
                    || UNIT_WORDS
                        .iter()
                        .any(|(w, _)| *w == unit || unit.strip_suffix('s') == Some(w));
                if unit_known && !inner_mark {
                    self.numbers.push(num.replace(',', ""));
                    if !matches!(unit, "st" | "nd" | "rd" | "th") {
                        self.numbers
                            .push(format!("unit:{}", unit.trim_end_matches('s')));
                    }
                    return;
                }
            }
            self.entities.push(lower);
            return;
        }
        if inner_mark && has_alpha {
            // snake_case, dotted.names, user@host, a/b paths, AB-12 style codes.
            if token.contains(['_', '.', '@', '/', ':', '#'])
                || token.chars().any(char::is_uppercase)
            {
                self.entities.push(lower);
                return;
            }
        }
        if let Some((_, value)) = NUMBER_WORDS.iter().find(|(w, _)| *w == bare) {
            self.numbers.push((*value).to_owned());
        }
        // "may" is a month only when written "May"; "Sundays" is "Sunday".
        let time = if TIME_WORDS.contains(&bare.as_str()) {
            Some(bare.as_str())
        } else {
            bare.strip_suffix('s')
                .filter(|w| w.ends_with("day") || w.ends_with("night") || w.ends_with("weekend"))
                .filter(|w| TIME_WORDS.contains(w))
        };
        // "am"/"pm" are times only after a number ("7 pm"; "Am I allowed" is not).
        let after_number = self.tokens.get(position.wrapping_sub(1)).is_some_and(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_digit() || c == ':' || c == '.')
        });
        let rate = RATE_WORDS.iter().find(|(w, _)| *w == bare).map(|(_, u)| *u);
        if let Some(unit) = rate {
            // "hourly" is "per hour", "an hour", "every hour".
            push_unique(&mut self.numbers, format!("unit:{unit}"));
        } else if let Some(time) = time
            && (time != "may" || token.starts_with('M'))
            && (!matches!(time, "am" | "pm") || after_number)
        {
            push_unique(&mut self.numbers, format!("time:{time}"));
        }
        let singular = bare
            .strip_suffix('s')
            .filter(|s| s.len() > 1)
            .unwrap_or(&bare);
        let unit = UNIT_WORDS
            .iter()
            .find(|(w, _)| *w == bare || *w == singular)
            .map(|(_, u)| *u);
        if let Some(unit) = unit {
            self.unit_after(position);
            push_unique(&mut self.numbers, format!("unit:{unit}"));
        }
        // "each" and "every" say the same.
        let quantifier = if bare == "each" {
            "every"
        } else {
            bare.as_str()
        };
        if let Some(q) = QUANTIFIERS.iter().find(|q| **q == quantifier) {
            push_unique(&mut self.quantifiers, *q);
        }
        if let Some((_, owner)) = OWNERS.iter().find(|(w, _)| *w == bare) {
            push_unique(&mut self.owners, *owner);
        }
        let upper_count = token.chars().filter(|c| c.is_uppercase()).count();
        let is_time = time.is_some();
        let is_name = if is_time || unit.is_some() {
            // Weekdays and months are compared as times ("Sunday" / "Sundays"), currency
            // codes and units as units ("EUR" / "euros").
            false
        } else if sentence_start {
            // A capital at the start of a sentence says nothing ("Recipe for…", "Paris
            // hotels"): only acronyms and mixed case ("USD", "iPhone") count there.
            upper_count >= 2
        } else {
            upper_count >= 1 && bare != "i"
        };
        if is_name {
            self.entities.push(bare.clone());
        }
        if ROLE_WORDS.contains(&bare.as_str()) {
            self.roles.push(position);
        }
        let counted = NEGATIONS.contains(&bare.as_str())
            || time.is_some()
            || QUANTIFIERS.contains(&bare.as_str())
            || OWNERS.iter().any(|(w, _)| *w == bare)
            || NUMBER_WORDS.iter().any(|(w, _)| *w == bare)
            || TIME_WORDS.contains(&bare.as_str());
        if !counted && bare.chars().all(char::is_alphabetic) && !lexicon::is_function_word(&bare) {
            self.content
                .push((position, lexicon::stem(&bare), bare.clone()));
        } else if bare.contains('-') {
            // "part-time employees": what the parts say counts ("employees" / "part-time
            // employees" differ).
            for part in bare.split('-') {
                if !part.is_empty()
                    && part.chars().all(char::is_alphabetic)
                    && !lexicon::is_function_word(part)
                {
                    self.content
                        .push((position, lexicon::stem(part), part.to_owned()));
                }
            }
        }
        self.words.push(bare);
    }

    /// A unit word at `position`: "one month" and "1 month" say "a month", and "every
    /// month" / "each month" say "per month" (a rate, not a quantifier over months).
    fn unit_after(&mut self, position: usize) {
        let Some(before) = position.checked_sub(1).and_then(|p| self.tokens.get(p)) else {
            return;
        };
        if matches!(before.as_str(), "one" | "1") && self.numbers.last().is_some_and(|n| n == "1") {
            let last = self.numbers.len() - 1;
            self.numbers.remove(last);
        }
        let rate_words = |t: &String| t == "every" || t == "each";
        if rate_words(before) && self.tokens.iter().filter(|t| rate_words(t)).count() == 1 {
            self.quantifiers.retain(|q| *q != "every");
        }
    }

    fn has_stem(&self, stem: &str) -> bool {
        self.content.iter().any(|(_, s, _)| s == stem)
    }

    /// Whether this prompt has `word` in another spelling: the same stem, one typo away
    /// (words of five letters or more), or the same first six letters (`synchrony` /
    /// `synchronism`, `transfer` / `transferring`).
    fn has_spelling_of(&self, stem: &str, word: &str) -> bool {
        self.content.iter().any(|(_, s, w)| {
            s == stem
                || (word.len() >= 5 && w.len() >= 5 && one_edit_apart(word, w))
                || (word.len() >= 6 && w.len() >= 6 && word.as_bytes()[..6] == w.as_bytes()[..6])
        })
    }

    /// Content words of `self` that `other` does not have (by stem, not among its tokens in
    /// any case, and no WordNet synonym of them among its content words), in order.
    fn only_here<'a>(&'a self, other: &Self) -> Vec<&'a str> {
        self.content
            .iter()
            .filter(|(_, stem, word)| {
                !other.has_spelling_of(stem, word)
                    && !other.tokens.contains(word)
                    && !other
                        .content
                        .iter()
                        .any(|(_, _, w)| lexicon::are_synonyms(word, w))
            })
            .map(|(_, _, word)| word.as_str())
            .collect()
    }

    /// A word of one prompt whose opposite the other says instead, by the lexicon.
    fn lexical_opposite(&self, other: &Self) -> bool {
        let only_a: Vec<&String> = self
            .words
            .iter()
            .filter(|w| !other.words.contains(w))
            .collect();
        let only_b: Vec<&String> = other
            .words
            .iter()
            .filter(|w| !self.words.contains(w))
            .collect();
        only_a
            .iter()
            .any(|a| only_b.iter().any(|b| lexicon::are_opposites(a, b)))
    }

    /// The role word closest before the first occurrence of `stem`, folded to its class
    /// (`to`, `into`, `onto`, `toward` are one).
    fn role_before(&self, stem: &str) -> Option<&str> {
        let at = self.content.iter().find(|(_, s, _)| s == stem)?.0;
        let role = self.roles.iter().rev().find(|r| **r < at)?;
        // Only a role word of the same phrase: at most three words before.
        if at - role > 3 {
            return None;
        }
        let word = self.tokens.get(*role)?.as_str();
        Some(match word {
            "into" | "onto" | "toward" | "towards" => "to",
            "versus" => "vs",
            w => w,
        })
    }

    /// Two shared content words in the other order, with a role word between them in both;
    /// or a shared word governed by another role word (`emails from my boss` / `emails to
    /// my boss`).
    fn roles_swapped(&self, other: &Self) -> bool {
        for (_, stem, _) in &self.content {
            if other.has_stem(stem)
                && let (Some(a), Some(b)) = (self.role_before(stem), other.role_before(stem))
                && a != b
            {
                return true;
            }
        }
        let first = |f: &Self, stem: &str| {
            f.content
                .iter()
                .find(|(_, s, _)| s == stem)
                .map(|(p, _, _)| *p)
        };
        let role_between =
            |f: &Self, x: usize, y: usize| f.roles.iter().any(|r| *r > x.min(y) && *r < x.max(y));
        let shared: Vec<&str> = self
            .content
            .iter()
            .map(|(_, s, _)| s.as_str())
            .filter(|s| other.has_stem(s))
            .collect();
        for (i, x) in shared.iter().enumerate() {
            for y in &shared[i + 1..] {
                if x == y {
                    continue;
                }
                let (Some(ax), Some(ay), Some(bx), Some(by)) = (
                    first(self, x),
                    first(self, y),
                    first(other, x),
                    first(other, y),
                ) else {
                    continue;
                };
                if (ax < ay) != (bx < by)
                    && role_between(self, ax, ay)
                    && role_between(other, bx, by)
                {
                    return true;
                }
            }
        }
        false
    }

    /// Whether the speaker is the subject (`I sell`, `can we sell`) or the object (`sells
    /// me`, `sell us`) of the content word with `stem`, at any of its occurrences.
    fn speaker_role(&self, stem: &str) -> (bool, bool) {
        let (mut subject, mut object) = (false, false);
        for (at, s, _) in &self.content {
            if s != stem {
                continue;
            }
            let before = &self.tokens[at.saturating_sub(2)..*at];
            subject |= before.iter().any(|t| t == "i" || t == "we");
            object |= self
                .tokens
                .get(at + 1)
                .is_some_and(|t| t == "me" || t == "us");
        }
        (subject, object)
    }

    /// A shared word whose doer is the speaker in one prompt and whose receiver is the
    /// speaker in the other (`when I sell bitcoin` / `when someone sells me bitcoin`, `can I
    /// send you` / `can you send me`).
    fn speaker_swapped(&self, other: &Self) -> bool {
        self.content.iter().any(|(_, stem, _)| {
            if !other.has_stem(stem) {
                return false;
            }
            let (a_subject, a_object) = self.speaker_role(stem);
            let (b_subject, b_object) = other.speaker_role(stem);
            (a_subject && !a_object && b_object && !b_subject)
                || (a_object && !a_subject && b_subject && !b_object)
        })
    }

    /// What each prompt says that the other does not: this prompt's span first. When both
    /// say something of their own it is a substitution (`children` / `adults`); when only
    /// one does, an insertion, and the other side is the other prompt's content words
    /// (`business class` / `cheapest flights boston london`), so that a word the other
    /// prompt already implies (`address` with `email`) passes and a new qualifier does not.
    pub fn substitution(&self, other: &Self) -> Option<(String, String)> {
        let a = self.only_here(other);
        let b = other.only_here(self);
        let all = |f: &Self| {
            f.content
                .iter()
                .map(|(_, _, w)| w.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        match (a.is_empty(), b.is_empty()) {
            (true, true) => None,
            (false, false) => Some((a.join(" "), b.join(" "))),
            (false, true) => Some((a.join(" "), all(other))).filter(|(_, b)| !b.is_empty()),
            (true, false) => Some((all(self), b.join(" "))).filter(|(a, _)| !a.is_empty()),
        }
    }

    /// Whether the differences are only insertions (one prompt adds words, the other none).
    pub fn is_insertion(&self, other: &Self) -> bool {
        self.only_here(other).is_empty() != other.only_here(self).is_empty()
    }

    /// The span similarity a substitution between these prompts needs, given the floor for
    /// one word swapped for one word.
    ///
    /// A trap is usually one thing swapped for another of its kind (`children` / `adults`,
    /// `Paris` / `Rome`): the one-for-one floor applies, and to insertions. A rephrasing
    /// replaces several words on both sides (`how much do teachers earn` / `average salary`)
    /// and the mean of several static word vectors is a noisier measure, so it passes
    /// 0.15 lower (two words for one: half that). Chosen on the tuning part
    /// of the quality set (`tests/quality_tune.rs`, `span_shapes`).
    pub fn substitution_floor(&self, other: &Self, floor: f32) -> f32 {
        let (a, b) = (self.only_here(other), other.only_here(self));
        if a.is_empty() || b.is_empty() {
            return floor;
        }
        match a.len() + b.len() {
            2 => floor,
            3 => floor - RESTRUCTURED_SLACK / 2.0,
            _ => floor - RESTRUCTURED_SLACK,
        }
    }

    fn has_word(&self, stem: &str) -> bool {
        self.words.iter().any(|w| is_form_of(w, stem))
    }

    /// The first reason to refuse serving `other`'s answer for `self`, if any.
    pub fn veto(&self, other: &Self, config: &GuardConfig) -> Option<VetoReason> {
        if config.negation && self.negations != other.negations {
            return Some(VetoReason::Negation);
        }
        if config.numbers && !same_numbers(&self.numbers, &other.numbers) {
            return Some(VetoReason::Number);
        }
        if config.entities && !same_entities(self, other) {
            return Some(VetoReason::Entity);
        }
        if config.antonyms {
            for (a, b) in ANTONYMS {
                let (sa, sb) = (self.has_word(a), self.has_word(b));
                let (oa, ob) = (other.has_word(a), other.has_word(b));
                if (sa && !sb && ob && !oa) || (sb && !sa && oa && !ob) {
                    return Some(VetoReason::Antonym);
                }
            }
            if config.lexicon && self.lexical_opposite(other) {
                return Some(VetoReason::Antonym);
            }
        }
        if config.roles && (self.roles_swapped(other) || self.speaker_swapped(other)) {
            return Some(VetoReason::Role);
        }
        if config.scope {
            if !same_set(&self.quantifiers, &other.quantifiers) {
                return Some(VetoReason::Scope);
            }
            let owners_a: Vec<_> = self
                .owners
                .iter()
                .filter(|o| **o != "you" && **o != "self")
                .collect();
            let owners_b: Vec<_> = other
                .owners
                .iter()
                .filter(|o| **o != "you" && **o != "self")
                .collect();
            if !same_set(&owners_a, &owners_b) {
                return Some(VetoReason::Scope);
            }
        }
        None
    }
}

/// Whether `a` and `b` differ by one inserted, deleted or replaced character, or two
/// adjacent characters swapped (a typo).
fn one_edit_apart(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a == b {
        return true;
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (ra, rb) = (&a[prefix..], &b[prefix..]);
    match ra.len().cmp(&rb.len()) {
        std::cmp::Ordering::Equal => {
            ra[1..] == rb[1..]
                || (ra.len() >= 2 && ra[0] == rb[1] && ra[1] == rb[0] && ra[2..] == rb[2..])
        }
        std::cmp::Ordering::Greater => ra.len() == rb.len() + 1 && ra[1..] == *rb,
        std::cmp::Ordering::Less => rb.len() == ra.len() + 1 && rb[1..] == *ra,
    }
}

/// Every name of one prompt appears (in any case) in the other, and the names both have
/// come in the same order ("Paris to Rome" is not "Rome to Paris").
fn same_entities(a: &PromptFeatures, b: &PromptFeatures) -> bool {
    let mentioned = |e: &String, p: &PromptFeatures| p.entities.contains(e) || p.tokens.contains(e);
    if !a.entities.iter().all(|e| mentioned(e, b)) || !b.entities.iter().all(|e| mentioned(e, a)) {
        return false;
    }
    let common_a: Vec<&String> = a
        .entities
        .iter()
        .filter(|e| b.entities.contains(e))
        .collect();
    let common_b: Vec<&String> = b
        .entities
        .iter()
        .filter(|e| a.entities.contains(e))
        .collect();
    common_a == common_b
}

/// Numbers and units in the same order ("14 to 16" is not "16 to 14", "euros to dollars"
/// is not "dollars to euros"); times of day, weekdays and months as sets.
fn same_numbers(a: &[String], b: &[String]) -> bool {
    let pick = |v: &[String], prefix: Option<&str>| -> Vec<String> {
        v.iter()
            .filter(|x| match prefix {
                Some(p) => x.starts_with(p),
                None => !x.starts_with("unit:") && !x.starts_with("time:"),
            })
            .cloned()
            .collect()
    };
    // "at 7" says neither morning nor evening: am/pm differ only when both prompts say one.
    let meridiem = |v: &[String]| -> Option<String> {
        v.iter()
            .find(|x| matches!(x.as_str(), "unit:am" | "unit:pm" | "time:am" | "time:pm"))
            .map(|x| x[5..].to_owned())
    };
    let day_part = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .filter(|x| !matches!(x.as_str(), "unit:am" | "unit:pm" | "time:am" | "time:pm"))
            .collect()
    };
    let meridiems_agree = match (meridiem(a), meridiem(b)) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    };
    meridiems_agree
        && pick(a, None) == pick(b, None)
        && day_part(pick(a, Some("unit:"))) == day_part(pick(b, Some("unit:")))
        && same_set(
            &day_part(pick(a, Some("time:"))),
            &day_part(pick(b, Some("time:"))),
        )
}

fn same_set<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
}

/// Run the guard on two prompts: `None` when the hit may be served.
///
/// ```
/// use palisade_semantic_cache::guard::{check, GuardConfig, VetoReason};
/// let config = GuardConfig::default();
/// assert_eq!(check("Cancel my subscription", "Don't cancel my subscription", &config), Some(VetoReason::Negation));
/// assert_eq!(check("Refund $20", "Refund $200", &config), Some(VetoReason::Number));
/// assert_eq!(check("How do I reset my password?", "how can I reset my password", &config), None);
/// ```
pub fn check(query: &str, cached: &str, config: &GuardConfig) -> Option<VetoReason> {
    PromptFeatures::extract(query).veto(&PromptFeatures::extract(cached), config)
}

/// The whole guard on one candidate: the lexical checks of [`PromptFeatures::veto`], then,
/// if they pass and [`GuardConfig::substitutions`] is on, the differing spans embedded and
/// compared. The cache and the quality evaluation both decide through this function.
///
/// Cost: the lexical checks are a few microseconds; a substitution costs one
/// [`Embedder::span_similarity`] (only for a candidate that passed everything else): two
/// short embeddings by default, a word-piece table lookup of microseconds with MiniLM.
///
/// # Errors
/// The embedder's errors.
pub async fn judge(
    embedder: &dyn Embedder,
    query: &PromptFeatures,
    cached: &PromptFeatures,
    config: &GuardConfig,
) -> Result<Option<VetoReason>> {
    if let Some(reason) = query.veto(cached, config) {
        return Ok(Some(reason));
    }
    if !config.substitutions {
        return Ok(None);
    }
    let Some((a, b)) = query.substitution(cached) else {
        return Ok(None);
    };
    let floor = config
        .substitution_similarity
        .unwrap_or_else(|| embedder.recommended_span_similarity());
    let floor = query.substitution_floor(cached, floor);
    let similarity = span_similarity(embedder, &a, &b).await?;
    Ok((similarity < floor).then_some(VetoReason::Substitution))
}

/// Cosine similarity of two spans, as the embedder judges spans
/// ([`Embedder::span_similarity`]).
///
/// # Errors
/// The embedder's errors.
pub async fn span_similarity(embedder: &dyn Embedder, a: &str, b: &str) -> Result<f32> {
    embedder.span_similarity(a, b).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veto(a: &str, b: &str) -> Option<VetoReason> {
        check(a, b, &GuardConfig::default())
    }

    #[test]
    fn negation_traps_are_vetoed() {
        assert_eq!(
            veto("Cancel my subscription", "Don't cancel my subscription"),
            Some(VetoReason::Negation)
        );
        assert_eq!(
            veto(
                "Is it safe to take aspirin?",
                "Is it not safe to take aspirin?"
            ),
            Some(VetoReason::Negation)
        );
        assert_eq!(
            veto("meals with gluten", "meals without gluten"),
            Some(VetoReason::Negation)
        );
    }

    #[test]
    fn number_and_date_traps_are_vetoed() {
        assert_eq!(
            veto("Book a table for 2", "Book a table for 4"),
            Some(VetoReason::Number)
        );
        assert_eq!(veto("Book a table for two", "Book a table for 2"), None);
        assert_eq!(
            veto("weather today", "weather tomorrow"),
            Some(VetoReason::Number)
        );
        assert_eq!(
            veto("Transfer 1,000 dollars", "Transfer 1000 dollars"),
            None
        );
        assert_eq!(veto("Run 5 km", "Run 5 miles"), Some(VetoReason::Number));
        assert_eq!(
            veto("meeting at 3pm", "meeting at 4pm"),
            Some(VetoReason::Number)
        );
        assert_eq!(
            veto("What happened in March?", "What happened in May?"),
            Some(VetoReason::Number)
        );
    }

    #[test]
    fn entity_traps_are_vetoed() {
        assert!(veto("Convert USD to EUR", "Convert EUR to USD").is_some());
        assert_eq!(
            veto("Flights from Paris to Rome", "Flights from Rome to Paris"),
            Some(VetoReason::Entity)
        );
        assert_eq!(
            veto("How do I read a file in Rust?", "Rust: read a file"),
            None
        );
        assert_eq!(
            veto(
                "What is the capital of France?",
                "What is the capital of Spain?"
            ),
            Some(VetoReason::Entity)
        );
        assert_eq!(
            veto("Hotels in Paris", "Hotels in Rome"),
            Some(VetoReason::Entity)
        );
        assert_eq!(
            veto("Upgrade from 14 to 16", "Upgrade from 16 to 14"),
            Some(VetoReason::Number)
        );
        assert_eq!(
            veto("Convert 30 euros to dollars", "Convert 30 dollars to euros"),
            Some(VetoReason::Number)
        );
        assert_eq!(
            veto("status of order A123", "status of order A124"),
            Some(VetoReason::Entity)
        );
        assert_eq!(
            veto(
                "What is the capital of France?",
                "Tell me the capital of France"
            ),
            None
        );
    }

    #[test]
    fn antonym_and_scope_traps_are_vetoed() {
        assert_eq!(
            veto(
                "How do I enable two-factor login?",
                "How do I disable two-factor login?"
            ),
            Some(VetoReason::Antonym)
        );
        assert_eq!(
            veto("Delete this file", "Delete all files"),
            Some(VetoReason::Scope)
        );
        assert_eq!(
            veto("show my invoices", "show their invoices"),
            Some(VetoReason::Scope)
        );
    }

    #[test]
    fn opposites_without_not_are_vetoed() {
        assert_eq!(
            veto(
                "Is the pharmacy open on Sunday?",
                "Is the pharmacy closed on Sunday?"
            ),
            Some(VetoReason::Antonym)
        );
        assert_eq!(
            veto("Is it safe to eat sushi?", "Is it unsafe to eat sushi?"),
            Some(VetoReason::Antonym)
        );
        assert_eq!(
            veto(
                "Allow camera access in Chrome",
                "Deny camera access in Chrome"
            ),
            Some(VetoReason::Antonym)
        );
    }

    #[test]
    fn wordnet_synonyms_are_not_differences() {
        let span =
            |a: &str, b: &str| PromptFeatures::extract(a).substitution(&PromptFeatures::extract(b));
        assert_eq!(
            span(
                "Dose of ibuprofen for kids",
                "dose of ibuprofen for children"
            ),
            None
        );
        assert_eq!(
            span("Where can I purchase stamps", "where can I buy stamps"),
            None
        );
        assert!(
            span(
                "Dose of ibuprofen for adults",
                "dose of ibuprofen for children"
            )
            .is_some()
        );
        // Plural weekdays are times, not content words ("open on Sundays").
        assert_eq!(
            span(
                "Is the pharmacy open on Sunday?",
                "Does the pharmacy open on Sundays?"
            ),
            None
        );
    }

    #[test]
    fn the_speaker_as_doer_or_receiver_is_a_role() {
        assert_eq!(
            veto(
                "Do I pay tax when I sell bitcoin?",
                "Do I pay tax when someone sells me bitcoin?"
            ),
            Some(VetoReason::Role)
        );
        assert_eq!(
            veto("Can you send me the file?", "Can I send you the file?"),
            Some(VetoReason::Role)
        );
        assert_eq!(veto("Can I sell my car?", "How can I sell my car?"), None);
    }

    #[test]
    fn roles_are_checked() {
        assert_eq!(
            veto(
                "Move $200 from checking to savings",
                "Move $200 from savings to checking"
            ),
            Some(VetoReason::Role)
        );
        assert_eq!(
            veto(
                "How do I merge my feature branch into main?",
                "How do I merge main into my feature branch?"
            ),
            Some(VetoReason::Role)
        );
        assert_eq!(
            veto(
                "How do I stop emails from my boss going to spam?",
                "How do I stop my emails to my boss going to spam?"
            ),
            Some(VetoReason::Role)
        );
        assert_eq!(
            veto(
                "Move $200 from checking to savings",
                "Please move $200 from checking into savings"
            ),
            None
        );
    }

    #[test]
    fn what_differs_is_found() {
        let f =
            |a: &str, b: &str| PromptFeatures::extract(a).substitution(&PromptFeatures::extract(b));
        assert_eq!(
            f(
                "dose of ibuprofen for adults",
                "dose of ibuprofen for children"
            ),
            Some(("adults".to_owned(), "children".to_owned()))
        );
        // An insertion: the other side is the other prompt's content words.
        assert_eq!(
            f("cheapest business class flights", "cheapest flights"),
            Some(("business class".to_owned(), "cheapest flights".to_owned()))
        );
        // Function words, typos and other spellings are not differences.
        assert_eq!(
            f(
                "How can I reset my password",
                "how do I reset my password please"
            ),
            None
        );
        assert_eq!(f("Should I cahnge my oil", "Should I change my oil"), None);
        assert_eq!(f("transferring credits", "transfer credits"), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_prompts_never_panic(a in "\\PC{0,60}", b in "\\PC{0,60}") {
            let (fa, fb) = (PromptFeatures::extract(&a), PromptFeatures::extract(&b));
            let _ = fa.veto(&fb, &GuardConfig::default());
            let _ = fa.substitution(&fb);
            let _ = fa.is_insertion(&fb);
        }

        #[test]
        fn a_prompt_never_vetoes_itself(a in "[a-zA-Z0-9 ,.?$%'-]{0,80}") {
            let f = PromptFeatures::extract(&a);
            proptest::prop_assert_eq!(f.veto(&f, &GuardConfig::default()), None);
            proptest::prop_assert_eq!(f.substitution(&f), None);
        }
    }

    #[test]
    fn paraphrases_pass() {
        assert_eq!(
            veto(
                "How can I change my email address?",
                "how do i update my email address"
            ),
            None
        );
        assert_eq!(
            veto("What's the refund policy?", "what is your refund policy"),
            None
        );
    }

    /// Words that looked like differences and are not (found on the tuning part).
    #[test]
    fn false_differences_are_not_vetoed() {
        // "Am" opening a question is not a time of day; "7 pm" still is.
        assert_eq!(
            veto("Am I allowed to keep a dog here?", "Can I keep a dog here?"),
            None
        );
        assert_eq!(
            veto("Book a table at 7 pm", "Book a table at 7 am"),
            Some(VetoReason::Number)
        );
        // Weekdays are times, compared as such, not names.
        assert_eq!(
            veto(
                "Is the pharmacy open on Sunday?",
                "Does the pharmacy open on Sundays?"
            ),
            None
        );
        assert_eq!(
            veto(
                "Is the pharmacy open on Sunday?",
                "Is the pharmacy open on Monday?"
            ),
            Some(VetoReason::Number)
        );
        // "each" is "every"; "X or not?" asks, it does not negate.
        assert_eq!(
            veto(
                "Change the oil every 3,000 miles?",
                "Change the oil each 3,000 miles?"
            ),
            None
        );
        assert_eq!(veto("Is the library open?", "library open or not?"), None);
        assert_eq!(
            veto("Is the library open?", "Is the library not open?"),
            Some(VetoReason::Negation)
        );
    }

    #[test]
    fn hyphenated_words_are_compared_by_their_parts() {
        let f =
            |a: &str, b: &str| PromptFeatures::extract(a).substitution(&PromptFeatures::extract(b));
        assert_eq!(
            f("leave for part-time employees", "leave for employees"),
            Some(("part time".to_owned(), "leave employees".to_owned()))
        );
    }

    #[test]
    fn rates_articles_currency_codes_and_bare_hours_compare_as_meant() {
        // A rate said three ways.
        assert_eq!(
            veto("API rate limit per hour?", "hourly API rate limit?"),
            None
        );
        assert_eq!(veto("2 coffees every day", "2 coffees daily"), None);
        assert_eq!(veto("2 coffees a day", "2 coffees each day"), None);
        assert_eq!(
            veto("2 coffees daily", "2 coffees weekly"),
            Some(VetoReason::Number)
        );
        // "every" still quantifies things that are not units of time.
        assert_eq!(
            veto("Back up every folder", "Back up the folder"),
            Some(VetoReason::Scope)
        );
        // "one month" is "a month"; other counts still differ.
        assert_eq!(
            veto("Lose 5 lbs in one month", "Lose 5 lbs in a month"),
            None
        );
        assert_eq!(veto("Lose 5 lbs in 1 month", "Lose 5 lbs in a month"), None);
        assert_eq!(
            veto("Lose 5 lbs in one month", "Lose 5 lbs in two months"),
            Some(VetoReason::Number)
        );
        // A currency code is a unit, not a name.
        assert_eq!(
            veto("Convert 100 euros to dollars", "100 EUR in dollars"),
            None
        );
        assert_eq!(
            veto("Convert 100 EUR to dollars", "Convert 100 GBP to dollars"),
            Some(VetoReason::Number)
        );
        // "at 7" says neither morning nor evening; "7am" and "7pm" differ.
        assert_eq!(veto("Book a table at 7pm", "Book a table at 7"), None);
        assert_eq!(
            veto("Book a table at 7am", "Book a table at 7pm"),
            Some(VetoReason::Number)
        );
        assert_eq!(
            veto("Book a table at 7 pm", "Book a table at 7am"),
            Some(VetoReason::Number)
        );
    }

    #[test]
    fn a_restructured_difference_gets_a_lower_span_floor_than_a_swap() {
        let floor = |a: &str, b: &str| {
            PromptFeatures::extract(a).substitution_floor(&PromptFeatures::extract(b), 0.45)
        };
        // One thing for another: the whole floor.
        assert_eq!(
            floor("flu shots for children", "flu shots for adults"),
            0.45
        );
        // An insertion: the whole floor.
        assert_eq!(
            floor("cheap flights to Rome", "cheap business flights to Rome"),
            0.45
        );
        // Two words for one: half the slack.
        let two_for_one = floor("Book a table for 2", "Reserve a table for 2 people");
        assert!((two_for_one - 0.375).abs() < 1e-6, "{two_for_one}");
        // Several words on both sides: the whole slack.
        let several = floor(
            "Cancel my gym membership today",
            "Terminate my gym contract today",
        );
        assert!((several - 0.30).abs() < 1e-6, "{several}");
    }
}
