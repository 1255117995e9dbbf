//! Text search, the part without SQL: what a query means (its words, and
//! the Mroonga boolean expression that finds them) and where a hit's text
//! matched (the highlights a client shows).
//!
//! The index (`history_search`, migration 0005) cuts text with Groonga's
//! TokenBigram: Chinese, Japanese and other text without spaces in
//! overlapping character pairs, runs of letters and digits as words. A
//! query's words are all required; a word of letters and digits also finds
//! the words it begins, any other word is matched as written (a phrase, so
//! its characters in that order).

use crate::{
    domain::{Conversation, StoredMessage, Visibility},
    error::HistoryError,
};

/// Characters of a query, at most.
pub const MAX_QUERY_CHARS: usize = 200;
/// Words of a query used, at most (the rest are ignored).
pub const MAX_WORDS: usize = 10;
/// Hits per page by default, and at most.
pub const DEFAULT_HITS: u32 = 20;
pub const MAX_HITS: u32 = 100;
/// How deep paging goes (offset).
pub const MAX_OFFSET: u32 = 1000;

/// A validated search query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// Lowercased words, as the user wrote them.
    words: Vec<String>,
}

impl SearchQuery {
    pub fn parse(raw: &str) -> Result<Self, HistoryError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(HistoryError::InvalidArgument(
                "the search query is empty: give a word to look for".into(),
            ));
        }
        let chars = raw.chars().count();
        if chars > MAX_QUERY_CHARS {
            return Err(HistoryError::InvalidArgument(format!(
                "the search query has {chars} characters; at most {MAX_QUERY_CHARS}"
            )));
        }
        let mut words: Vec<String> = Vec::new();
        for word in raw.split_whitespace().map(str::to_lowercase) {
            if !words.contains(&word) {
                words.push(word);
            }
        }
        words.truncate(MAX_WORDS);
        Ok(Self { words })
    }

    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// The query in Mroonga's boolean mode: `*D+` makes every word
    /// required; a word of letters and digits is a prefix (`word*`), any
    /// other a quoted phrase with `"` and `\` escaped, so nothing the user
    /// types is read as an operator.
    pub fn expression(&self) -> String {
        let mut expression = String::from("*D+");
        for word in &self.words {
            expression.push(' ');
            if word.chars().all(|c| c.is_ascii_alphanumeric()) {
                expression.push_str(word);
                expression.push('*');
            } else {
                expression.push('"');
                for c in word.chars() {
                    if c == '"' || c == '\\' {
                        expression.push('\\');
                    }
                    expression.push(c);
                }
                expression.push('"');
            }
        }
        expression
    }

    /// How well `text` matches, as the index scores it: how many times the
    /// words occur (case folded), 0 when one of them is missing. As the
    /// index reads them: a word of letters and digits where a word starts
    /// (`meet` in "meeting", not in "emeet"), any other as written.
    pub fn score(&self, text: &str) -> f64 {
        let folded = text.to_lowercase();
        let mut total = 0;
        for word in &self.words {
            let prefix = word.chars().all(|c| c.is_ascii_alphanumeric());
            let n = folded
                .match_indices(word.as_str())
                .filter(|(at, _)| {
                    !prefix
                        || !folded[..*at]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_ascii_alphanumeric())
                })
                .count();
            if n == 0 {
                return 0.0;
            }
            total += n;
        }
        total as f64
    }

    /// `LIKE` patterns, one per word: `%word%` with `\`, `%` and `_`
    /// escaped (the column's collation ignores case).
    pub fn like_patterns(&self) -> Vec<String> {
        self.words
            .iter()
            .map(|word| {
                let mut pattern = String::with_capacity(word.len() + 2);
                pattern.push('%');
                for c in word.chars() {
                    if matches!(c, '\\' | '%' | '_') {
                        pattern.push('\\');
                    }
                    pattern.push(c);
                }
                pattern.push('%');
                pattern
            })
            .collect()
    }

    /// Where the words occur in `text`, ignoring case: `[start, end)` in
    /// code points, sorted, overlaps merged.
    pub fn highlights(&self, text: &str) -> Vec<(u32, u32)> {
        // One lowercase char per char of the text (a char whose lowercase
        // is longer keeps its first), so positions stay the text's.
        let folded: Vec<char> = text
            .chars()
            .map(|c| c.to_lowercase().next().unwrap_or(c))
            .collect();
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for word in &self.words {
            let word: Vec<char> = word.chars().collect();
            if word.is_empty() || word.len() > folded.len() {
                continue;
            }
            let mut i = 0;
            while i + word.len() <= folded.len() {
                if folded[i..i + word.len()] == word[..] {
                    ranges.push((i as u32, (i + word.len()) as u32));
                    i += word.len();
                } else {
                    i += 1;
                }
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }
}

/// How searches are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchSettings {
    /// Text is indexed and searches answered (`CLUSTERCHAT_HISTORY_SEARCH`).
    pub enabled: bool,
    /// A search whose conversations hold at most this many messages reads
    /// them (a `LIKE` per word over that range of the primary key) instead
    /// of asking the index, which costs what its words match in the whole
    /// table (`CLUSTERCHAT_HISTORY_SEARCH_SCAN_ROWS`; 0: always the index).
    pub scan_rows: u64,
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            scan_rows: 20_000,
        }
    }
}

/// The conversations a search reads, each as far as the user may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchScope {
    pub conversations: Vec<(Conversation, Visibility)>,
}

/// One message found.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub message: StoredMessage,
    pub score: f64,
}

/// One page of hits, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    pub more: bool,
}

/// Hits per page and where the page starts, as asked (0: the default).
pub fn page_bounds(limit: u32, offset: u32) -> Result<(u32, u32), HistoryError> {
    if offset > MAX_OFFSET {
        return Err(HistoryError::InvalidArgument(format!(
            "offset {offset} is past the {MAX_OFFSET} hits a search pages through; narrow the query"
        )));
    }
    let limit = match limit {
        0 => DEFAULT_HITS,
        n => n.min(MAX_HITS),
    };
    Ok((limit, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> SearchQuery {
        SearchQuery::parse(raw).expect("valid")
    }

    #[test]
    fn an_empty_or_overlong_query_says_why() {
        for raw in ["", "   \t"] {
            let err = SearchQuery::parse(raw).unwrap_err().to_string();
            assert!(err.contains("empty"), "{err}");
        }
        let err = SearchQuery::parse(&"字".repeat(201))
            .unwrap_err()
            .to_string();
        assert!(err.contains("201 characters"), "{err}");
        assert!(SearchQuery::parse(&"字".repeat(200)).is_ok());
    }

    #[test]
    fn words_become_required_prefixes_or_escaped_phrases() {
        assert_eq!(q("Meet").expression(), "*D+ meet*");
        assert_eq!(q("天气  lunch").expression(), r#"*D+ "天气" lunch*"#);
        // Operators and quotes are text, never syntax.
        assert_eq!(
            q(r#"-x +y (z) a"b c\d OR"#).expression(),
            r#"*D+ "-x" "+y" "(z)" "a\"b" "c\\d" or*"#
        );
        // Repeated words count once; at most MAX_WORDS.
        assert_eq!(q("a A a").words(), ["a"]);
        let many: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
        assert_eq!(q(&many.join(" ")).words().len(), MAX_WORDS);
    }

    #[test]
    fn highlights_are_code_points_case_folded_and_merged() {
        // 今天天气很好 — "天气" is at code points 2..4.
        assert_eq!(q("天气").highlights("今天天气很好"), [(2, 4)]);
        assert_eq!(
            q("park").highlights("Park at the PARKING"),
            [(0, 4), (12, 16)]
        );
        // Overlapping words are one range.
        assert_eq!(q("abc bcd").highlights("xabcdx"), [(1, 5)]);
        assert_eq!(q("zzz").highlights("abc"), []);
        // An emoji before the hit counts as one code point.
        assert_eq!(q("hi").highlights("🙂 hi"), [(2, 4)]);
    }

    #[test]
    fn scores_count_occurrences_and_patterns_escape_wildcards() {
        assert_eq!(q("公园").score("公园，公园，还是公园"), 3.0);
        assert_eq!(q("park meet").score("Meet me at the PARK"), 2.0);
        assert_eq!(q("park zzz").score("park"), 0.0);
        // As the index: a Latin word where a word starts.
        assert_eq!(q("meet").score("meeting, emeet"), 1.0);
        assert_eq!(q("eet").score("meeting"), 0.0);
        assert_eq!(q("京").score("北京"), 1.0);
        assert_eq!(
            q("50% a_b c\\d 天气").like_patterns(),
            ["%50\\%%", "%a\\_b%", "%c\\\\d%", "%天气%"]
        );
    }

    #[test]
    fn pages_have_a_default_a_cap_and_a_depth() {
        assert_eq!(page_bounds(0, 0).unwrap(), (DEFAULT_HITS, 0));
        assert_eq!(page_bounds(500, 40).unwrap(), (MAX_HITS, 40));
        assert!(page_bounds(20, MAX_OFFSET + 1).is_err());
    }
}
