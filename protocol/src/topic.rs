//! Topic names and subscription filters: validation and matching.
//!
//! A topic is one or more segments separated by `.`; each segment is one or
//! more of `A-Z a-z 0-9 _ - :`. A filter may also use two wildcards, each as
//! a whole segment: `*` matches exactly one segment, and `>` (last segment
//! only) matches one or more trailing segments.
//!
//! ```
//! use sockeye_protocol::topic::{TopicFilter, TopicName};
//! let topic = TopicName::parse("orders.eu.created", 255).unwrap();
//! assert!(TopicFilter::parse("orders.*.created", 255).unwrap().matches(&topic));
//! assert!(TopicFilter::parse("orders.>", 255).unwrap().matches(&topic));
//! assert!(!TopicFilter::parse("orders.*", 255).unwrap().matches(&topic));
//! ```

use std::fmt;

use crate::error::TopicError;

/// Default maximum length of a topic name or filter, in bytes.
pub const DEFAULT_MAX_TOPIC_BYTES: usize = 255;

/// A validated topic name: no wildcards. Messages are published to and stored
/// under topic names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

/// A validated subscription filter: a topic name that may contain wildcards.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(String);

const fn valid_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | ':')
}

/// [`valid_char`] for every byte, so [`TopicName::validate`] (which every
/// publish runs) does one load per byte.
static VALID_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = valid_char(byte as u8 as char);
        byte += 1;
    }
    table
};

fn valid_byte(byte: u8) -> bool {
    VALID_BYTES[usize::from(byte)]
}

/// The error for the character starting at byte `index` of a name, which
/// `valid_byte` refused: a wildcard, or any other character (decoded whole,
/// so a multi-byte one is reported as itself).
fn invalid_char_in_name(text: &str, index: usize) -> TopicError {
    match text[index..].chars().next() {
        Some('*' | '>') => TopicError::WildcardInName,
        Some(ch) => TopicError::InvalidChar { ch },
        None => unreachable!("index is the start of a byte of text"),
    }
}

/// Splits the first `.`-separated segment off `rest`; `None` once the last
/// segment was taken.
fn next_segment<'a>(rest: &mut Option<&'a [u8]>) -> Option<&'a [u8]> {
    let bytes = rest.take()?;
    match bytes.iter().position(|&byte| byte == b'.') {
        Some(dot) => {
            *rest = Some(&bytes[dot + 1..]);
            Some(&bytes[..dot])
        }
        None => Some(bytes),
    }
}

fn check_shape(text: &str, max: usize) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > max {
        return Err(TopicError::TooLong {
            len: text.len(),
            max,
        });
    }
    Ok(())
}

impl TopicName {
    /// Validates `text` as a topic name of at most `max` bytes.
    pub fn parse(text: &str, max: usize) -> Result<Self, TopicError> {
        Self::validate(text, max)?;
        Ok(Self(text.to_owned()))
    }

    /// Validates an owned string as a topic name, reusing its allocation.
    pub fn from_string(text: String, max: usize) -> Result<Self, TopicError> {
        Self::validate(&text, max)?;
        Ok(Self(text))
    }

    /// Checks that `text` is a valid topic name of at most `max` bytes,
    /// without allocating.
    ///
    /// One pass over the bytes: every publish runs it, and splitting into
    /// segments and decoding `char`s cost more than the rest of the check.
    pub fn validate(text: &str, max: usize) -> Result<(), TopicError> {
        check_shape(text, max)?;
        let bytes = text.as_bytes();
        let mut segment_empty = true;
        for (index, &byte) in bytes.iter().enumerate() {
            match byte {
                b'.' if segment_empty => return Err(TopicError::EmptySegment),
                b'.' => segment_empty = true,
                byte if valid_byte(byte) => segment_empty = false,
                _ => return Err(invalid_char_in_name(text, index)),
            }
        }
        if segment_empty {
            return Err(TopicError::EmptySegment);
        }
        Ok(())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `.`-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl TopicFilter {
    /// Validates `text` as a filter of at most `max` bytes.
    pub fn parse(text: &str, max: usize) -> Result<Self, TopicError> {
        check_shape(text, max)?;
        let count = text.split('.').count();
        for (index, segment) in text.split('.').enumerate() {
            match segment {
                "" => return Err(TopicError::EmptySegment),
                "*" => {}
                ">" if index + 1 == count => {}
                ">" => return Err(TopicError::MisplacedWildcard),
                _ => {
                    if let Some(ch) = segment.chars().find(|ch| !valid_char(*ch)) {
                        return Err(if ch == '*' || ch == '>' {
                            TopicError::MisplacedWildcard
                        } else {
                            TopicError::InvalidChar { ch }
                        });
                    }
                }
            }
        }
        Ok(Self(text.to_owned()))
    }

    /// The filter as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `.`-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// True if the filter has no wildcard, i.e. names exactly one topic.
    pub fn is_exact(&self) -> bool {
        self.segments()
            .all(|segment| segment != "*" && segment != ">")
    }

    /// The topic this filter names, if it has no wildcard.
    pub fn as_exact(&self) -> Option<TopicName> {
        self.is_exact().then(|| TopicName(self.0.clone()))
    }

    /// True if `topic` is matched by this filter.
    pub fn matches(&self, topic: &TopicName) -> bool {
        self.matches_str(topic.as_str())
    }

    /// True if `topic`, a valid topic name, is matched by this filter.
    ///
    /// Walks both as bytes (every publish checks its permissions with this,
    /// and `str::split`'s searcher costs more than the comparison).
    pub fn matches_str(&self, topic: &str) -> bool {
        let mut topic_rest = Some(topic.as_bytes());
        let mut filter_rest = Some(self.0.as_bytes());
        while let Some(pattern) = next_segment(&mut filter_rest) {
            let segment = next_segment(&mut topic_rest);
            match pattern {
                b">" => return segment.is_some(),
                b"*" if segment.is_some() => {}
                literal if segment == Some(literal) => {}
                _ => return false,
            }
        }
        topic_rest.is_none()
    }

    /// True if every topic matched by `narrower` is also matched by this
    /// filter. Used for permissions: a token allowed `chat.>` may subscribe
    /// to `chat.*`, but one allowed `chat.*` may not subscribe to `chat.>`.
    ///
    /// ```
    /// use sockeye_protocol::topic::TopicFilter;
    /// let f = |s| TopicFilter::parse(s, 255).unwrap();
    /// assert!(f("chat.>").covers(&f("chat.*")));
    /// assert!(f("chat.*").covers(&f("chat.lobby")));
    /// assert!(!f("chat.*").covers(&f("chat.>")));
    /// ```
    pub fn covers(&self, narrower: &TopicFilter) -> bool {
        let mut wide = self.segments();
        let mut narrow = narrower.segments();
        loop {
            match (wide.next(), narrow.next()) {
                (None, None) => return true,
                (Some(">"), Some(_)) => return true,
                (Some(_), Some(">")) => return false,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }

    /// True if some topic is matched by both filters.
    ///
    /// ```
    /// use sockeye_protocol::topic::TopicFilter;
    /// let f = |s| TopicFilter::parse(s, 255).unwrap();
    /// assert!(f("a.*").overlaps(&f("a.b")));
    /// assert!(f("a.>").overlaps(&f("*.b.c")));
    /// assert!(!f("a.*").overlaps(&f("a.b.c")));
    /// ```
    pub fn overlaps(&self, other: &TopicFilter) -> bool {
        let mut left = self.segments();
        let mut right = other.segments();
        loop {
            match (left.next(), right.next()) {
                (None, None) => return true,
                // `>` needs at least one segment on the other side; the other
                // side having one left (whatever it is) is enough.
                (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(a), Some(b)) => {
                    if a != "*" && b != "*" && a != b {
                        return false;
                    }
                }
            }
        }
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<TopicName> for TopicFilter {
    fn from(name: TopicName) -> Self {
        Self(name.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TopicName {
        TopicName::parse(s, 255).expect("valid name")
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s, 255).expect("valid filter")
    }

    /// Every string of up to 4 characters over an alphabet with each kind of
    /// character the rules treat apart (valid, `.`, wildcards, an invalid
    /// ASCII one, a multi-byte one).
    fn all_short_strings() -> Vec<String> {
        const ALPHABET: [&str; 7] = ["a", "B", ".", "*", ">", " ", "é"];
        let mut all = vec![String::new()];
        let mut previous = vec![String::new()];
        for _ in 0..4 {
            let next: Vec<String> = previous
                .iter()
                .flat_map(|prefix| ALPHABET.iter().map(move |ch| format!("{prefix}{ch}")))
                .collect();
            all.extend(next.iter().cloned());
            previous = next;
        }
        all
    }

    /// The rules as first written, segment by segment with `str::split`:
    /// the byte-wise `validate` must give the same answer, error included.
    fn validate_by_segments(text: &str, max: usize) -> Result<(), TopicError> {
        check_shape(text, max)?;
        for segment in text.split('.') {
            if segment.is_empty() {
                return Err(TopicError::EmptySegment);
            }
            if let Some(ch) = segment.chars().find(|ch| !valid_char(*ch)) {
                return Err(if ch == '*' || ch == '>' {
                    TopicError::WildcardInName
                } else {
                    TopicError::InvalidChar { ch }
                });
            }
        }
        Ok(())
    }

    fn matches_by_segments(filter: &TopicFilter, topic: &str) -> bool {
        let mut topic_segments = topic.split('.');
        for pattern in filter.segments() {
            match pattern {
                ">" => return topic_segments.next().is_some(),
                "*" => {
                    if topic_segments.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if topic_segments.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        topic_segments.next().is_none()
    }

    #[test]
    fn byte_wise_validate_agrees_with_the_segment_rules() {
        for text in all_short_strings() {
            assert_eq!(
                TopicName::validate(&text, 6),
                validate_by_segments(&text, 6),
                "{text:?}"
            );
        }
    }

    #[test]
    fn byte_wise_matching_agrees_with_the_segment_rules() {
        let strings = all_short_strings();
        let names: Vec<&String> = strings
            .iter()
            .filter(|text| TopicName::validate(text, 255).is_ok())
            .collect();
        let filters: Vec<TopicFilter> = strings
            .iter()
            .filter_map(|text| TopicFilter::parse(text, 255).ok())
            .collect();
        assert!(names.len() >= 50 && filters.len() >= 70);
        let mut matched = 0;
        for filter in &filters {
            for name in &names {
                let expected = matches_by_segments(filter, name);
                assert_eq!(filter.matches_str(name), expected, "{filter} vs {name}");
                matched += usize::from(expected);
            }
        }
        assert!(matched > 100, "the sample must hold matches too");
    }

    #[test]
    fn names_reject_bad_shapes() {
        assert_eq!(TopicName::parse("", 255), Err(TopicError::Empty));
        assert_eq!(TopicName::parse("a..b", 255), Err(TopicError::EmptySegment));
        assert_eq!(TopicName::parse(".a", 255), Err(TopicError::EmptySegment));
        assert_eq!(TopicName::parse("a.", 255), Err(TopicError::EmptySegment));
        assert_eq!(
            TopicName::parse("a.*", 255),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            TopicName::parse("a b", 255),
            Err(TopicError::InvalidChar { ch: ' ' })
        );
        assert_eq!(
            TopicName::parse("é", 255),
            Err(TopicError::InvalidChar { ch: 'é' })
        );
        assert_eq!(
            TopicName::parse("abcd", 3),
            Err(TopicError::TooLong { len: 4, max: 3 })
        );
        assert!(TopicName::parse("Orders-2:eu_1.x", 255).is_ok());
    }

    #[test]
    fn filters_reject_misplaced_wildcards() {
        assert_eq!(
            TopicFilter::parse("a.>.b", 255),
            Err(TopicError::MisplacedWildcard)
        );
        assert_eq!(
            TopicFilter::parse("a*", 255),
            Err(TopicError::MisplacedWildcard)
        );
        assert_eq!(
            TopicFilter::parse("a.b>", 255),
            Err(TopicError::MisplacedWildcard)
        );
        assert!(TopicFilter::parse(">", 255).is_ok());
        assert!(TopicFilter::parse("*.*.>", 255).is_ok());
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        assert!(filter("a.*").matches(&name("a.b")));
        assert!(!filter("a.*").matches(&name("a")));
        assert!(!filter("a.*").matches(&name("a.b.c")));
        assert!(filter("*.b").matches(&name("x.b")));
    }

    #[test]
    fn gt_matches_one_or_more_trailing_segments() {
        assert!(filter("a.>").matches(&name("a.b")));
        assert!(filter("a.>").matches(&name("a.b.c.d")));
        assert!(!filter("a.>").matches(&name("a")));
        assert!(filter(">").matches(&name("anything.at.all")));
    }

    #[test]
    fn exact_filters_match_only_themselves() {
        assert!(filter("a.b").matches(&name("a.b")));
        assert!(!filter("a.b").matches(&name("a.bc")));
        assert!(filter("a.b").is_exact());
        assert!(!filter("a.*").is_exact());
    }

    #[test]
    fn covers_means_every_matched_topic_is_matched() {
        let cases = [
            (">", "a.b.>", true),
            ("a.>", "a.*", true),
            ("a.>", "a", false),
            ("a.*", "a.b", true),
            ("a.*", "a.>", false),
            ("a.*", "a.*", true),
            ("a.b", "a.*", false),
            ("a.b", "a.b", true),
            ("*.b", "a.b", true),
            ("a.*.c", "a.*.c", true),
            ("a.*.c", "a.>", false),
        ];
        for (wide, narrow, expected) in cases {
            assert_eq!(
                filter(wide).covers(&filter(narrow)),
                expected,
                "{wide} covers {narrow}"
            );
        }
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            ("*.c", "a.>", true),
            (">", "x", true),
            ("a.*.c", "a.b.*", true),
            ("a.*.c", "a.b.d", false),
        ];
        for (left, right, expected) in cases {
            assert_eq!(
                filter(left).overlaps(&filter(right)),
                expected,
                "{left} vs {right}"
            );
            assert_eq!(
                filter(right).overlaps(&filter(left)),
                expected,
                "{right} vs {left}"
            );
        }
    }
}
