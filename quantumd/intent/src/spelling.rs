//! Typing slips in a request ("bakcup", "serach", "pasword"): a word the
//! engine does not know, one slip away from exactly one word it does, is read
//! as that word before the model sees the request. The model's word pieces
//! split a misspelt word into pieces that mean nothing, so one slip can cost
//! the whole match.
//!
//! Only slips that keep the word's letters are mended: two neighbours
//! swapped, one letter missing, one letter doubled or added. A different
//! letter ("mount" / "count") is a different word as often as a slip, and is
//! left alone; so are words shorter than five letters, and words the
//! model's vocabulary holds whole ("patch" is a word, not a slip of "path").

use std::collections::{HashMap, HashSet};

/// The words the engine knows and how to reach them from a slip.
#[derive(Debug, Clone, Default)]
pub struct Speller {
    known: HashSet<String>,
    /// A known word with one letter taken out -> the known words it came
    /// from (a request word missing that letter).
    missing: HashMap<String, Vec<String>>,
    /// Words that are words though the catalog never uses them (the model's
    /// whole-word vocabulary): never mended.
    words: HashSet<String>,
}

const MIN_LEN: usize = 5;

/// Everyday words a request uses (numbers, time, contractions written
/// without their apostrophe) that are one slip from a catalog word ("three"
/// / "there", "whats" / "what"): known, so never mended.
const EVERYDAY: &[&str] = &[
    "whats",
    "thats",
    "heres",
    "theres",
    "youre",
    "doesnt",
    "cant",
    "wont",
    "isnt",
    "arent",
    "didnt",
    "three",
    "seven",
    "eight",
    "eleven",
    "twelve",
    "fifteen",
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "hundred",
    "thousand",
    "first",
    "second",
    "third",
    "seconds",
    "minute",
    "minutes",
    "hours",
    "weeks",
    "month",
    "months",
    "daily",
    "hourly",
    "weekly",
    "nightly",
    "monthly",
    "today",
    "tonight",
    "morning",
    "evening",
    "night",
    "yesterday",
    "tomorrow",
];

impl Speller {
    /// Knows every word of `texts` (lower-cased, letters only).
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Speller {
        let mut known: HashSet<String> = EVERYDAY.iter().map(|w| (*w).to_owned()).collect();
        for text in texts {
            known.extend(words(text).map(str::to_ascii_lowercase));
        }
        let mut missing: HashMap<String, Vec<String>> = HashMap::new();
        for w in &known {
            if w.len() <= MIN_LEN {
                continue;
            }
            for i in 0..w.len() {
                let mut short = w.clone();
                short.remove(i);
                let list = missing.entry(short).or_default();
                if !list.contains(w) {
                    list.push(w.clone());
                }
            }
        }
        for list in missing.values_mut() {
            list.sort();
        }
        Speller {
            known,
            missing,
            words: HashSet::new(),
        }
    }

    /// Leaves `words` alone: they are words of the language (the model's
    /// vocabulary), not slips, even where the catalog does not use them.
    pub fn leave(mut self, words: impl IntoIterator<Item = String>) -> Speller {
        self.words.extend(words.into_iter().map(|w| w.to_ascii_lowercase()));
        self
    }

    /// The known word `word` is one slip away from, if there is exactly one
    /// kind of answer; `None` for known words, short words and words that
    /// are nothing like a known one.
    pub fn mend(&self, word: &str) -> Option<String> {
        let w = word.to_ascii_lowercase();
        if w.len() < MIN_LEN || !w.bytes().all(|b| b.is_ascii_lowercase()) || self.known.contains(&w) || self.words.contains(&w) {
            return None;
        }
        // A known word with an ending ("tokens", "passwords", "killed") is
        // a word, not a slip: the ending may matter ("two tokens").
        for ending in ["s", "es", "ed", "d", "ing"] {
            if w.strip_suffix(ending).is_some_and(|stem| self.known.contains(stem)) {
                return None;
            }
        }
        let bytes = w.as_bytes();
        let mut found: Vec<String> = Vec::new();
        // Two neighbours swapped.
        for i in 0..bytes.len() - 1 {
            let mut b = bytes.to_vec();
            b.swap(i, i + 1);
            if let Ok(s) = String::from_utf8(b) {
                if self.known.contains(&s) && !found.contains(&s) {
                    found.push(s);
                }
            }
        }
        // One letter missing.
        if found.is_empty() {
            if let Some(list) = self.missing.get(&w) {
                found.extend(list.iter().cloned());
            }
        }
        // One letter too many.
        if found.is_empty() {
            for i in 0..w.len() {
                let mut s = w.clone();
                s.remove(i);
                if self.known.contains(&s) && !found.contains(&s) {
                    found.push(s);
                }
            }
        }
        (found.len() == 1).then(|| found.remove(0))
    }

    /// `text` with each mendable word replaced, everything else as written.
    /// A token with anything but letters inside (a path, a file name, a
    /// number) is not a word.
    pub fn correct(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for piece in text.split_inclusive(char::is_whitespace) {
            let core = piece
                .trim_end()
                .trim_start_matches(['"', '\'', '(', '`'])
                .trim_end_matches([',', '.', ';', ':', '!', '?', '"', '\'', ')', '`']);
            match self.mend(core).filter(|_| core.bytes().all(|b| b.is_ascii_alphabetic())) {
                Some(mended) => out.push_str(&piece.replacen(core, &mended, 1)),
                None => out.push_str(piece),
            }
        }
        out
    }
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_ascii_alphabetic()).filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speller() -> Speller {
        Speller::new([
            "make a backup of my files",
            "search for a password",
            "serve a folder",
            "count lines",
        ])
    }

    #[test]
    fn slips_are_mended() {
        let s = speller();
        assert_eq!(s.mend("bakcup").as_deref(), Some("backup"));
        assert_eq!(s.mend("serach").as_deref(), Some("search"));
        assert_eq!(s.mend("pasword").as_deref(), Some("password"));
        assert_eq!(s.mend("folderr").as_deref(), Some("folder"));
        assert_eq!(s.mend("sevre").as_deref(), Some("serve"));
    }

    #[test]
    fn words_that_may_be_words_are_left() {
        let s = speller();
        // Known, too short, a different letter, nothing like a known word.
        assert_eq!(s.mend("backup"), None);
        assert_eq!(s.mend("fles"), None);
        assert_eq!(s.mend("mount"), None);
        assert_eq!(s.mend("weather"), None);
        // A known word with an ending.
        assert_eq!(s.mend("folders"), None);
        assert_eq!(s.mend("searched"), None);
        // An everyday word one slip from a known one.
        assert_eq!(Speller::new(["hi there"]).mend("three"), None);
        // A word of the language one slip from a known one.
        assert_eq!(Speller::new(["show the path"]).mend("patch").as_deref(), Some("path"));
        assert_eq!(Speller::new(["show the path"]).leave(["patch".to_owned()]).mend("patch"), None);
        assert_eq!(Speller::new(["what is it"]).mend("whats"), None);
    }

    #[test]
    fn only_words_are_touched() {
        let s = speller();
        assert_eq!(
            s.correct("bakcup /srv/bakcup ~/folderr to serach.txt, pls serach?"),
            "backup /srv/bakcup ~/folderr to serach.txt, pls search?"
        );
    }
}
