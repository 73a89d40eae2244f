//! `--filter EXPR`: which upstream products (and image types) a mirror takes.
//!
//! `key=value`, `key!=value`, `key~regex`, `key!~regex` over a product's `os`, `release`,
//! `arch`, `variant` and the image `type` (`container` or `virtual-machine`). A regex matches
//! anywhere in the value unless anchored with `^`/`$`, as sstream-mirror's filters do.

use std::fmt;
use std::str::FromStr;

use regex::Regex;

/// The fields a filter may name.
pub const KEYS: [&str; 5] = ["os", "release", "arch", "variant", "type"];

#[derive(Debug, Clone)]
pub struct Filter {
    key: &'static str,
    test: Test,
    negated: bool,
    text: String,
}

#[derive(Debug, Clone)]
enum Test {
    Equals(String),
    Matches(Regex),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
    #[error("filter {0:?} has no operator: write key=value, key!=value, key~regex or key!~regex")]
    NoOperator(String),
    #[error("filter {0:?} names an unknown field {1:?}: use os, release, arch, variant or type")]
    UnknownKey(String, String),
    #[error("filter {0:?} has an empty value")]
    EmptyValue(String),
    #[error("filter {0:?}: type is container or virtual-machine")]
    BadType(String),
    #[error("filter {0:?} has an invalid regex: {1}")]
    BadRegex(String, String),
}

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Filter, FilterError> {
        let key_end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| FilterError::NoOperator(text.to_string()))?;
        let (key, rest) = text.split_at(key_end);
        let (negated, is_regex, value) = if let Some(value) = rest.strip_prefix("!~") {
            (true, true, value)
        } else if let Some(value) = rest.strip_prefix("!=") {
            (true, false, value)
        } else if let Some(value) = rest.strip_prefix('~') {
            (false, true, value)
        } else if let Some(value) = rest.strip_prefix('=') {
            (false, false, value)
        } else {
            return Err(FilterError::NoOperator(text.to_string()));
        };
        let key = KEYS
            .into_iter()
            .find(|known| *known == key)
            .ok_or_else(|| FilterError::UnknownKey(text.to_string(), key.to_string()))?;
        if value.is_empty() {
            return Err(FilterError::EmptyValue(text.to_string()));
        }
        let test = if is_regex {
            let regex = Regex::new(value)
                .map_err(|e| FilterError::BadRegex(text.to_string(), one_line(&e.to_string())))?;
            Test::Matches(regex)
        } else {
            if key == "type" && value != "container" && value != "virtual-machine" {
                return Err(FilterError::BadType(text.to_string()));
            }
            Test::Equals(value.to_string())
        };
        Ok(Filter {
            key,
            test,
            negated,
            text: text.to_string(),
        })
    }
}

impl Filter {
    /// The field this filter tests.
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// True when the filter holds for the value `field` gives for its key; a field with no
    /// value counts as the empty string.
    pub fn holds<'a>(&self, field: impl Fn(&str) -> Option<&'a str>) -> bool {
        let value = field(self.key).unwrap_or("");
        let matched = match &self.test {
            Test::Equals(expected) => value == expected,
            Test::Matches(regex) => regex.is_match(value),
        };
        matched != self.negated
    }

    /// True when every filter holds.
    pub fn all_hold<'a>(filters: &[Filter], field: impl Fn(&str) -> Option<&'a str>) -> bool {
        filters.iter().all(|filter| filter.holds(&field))
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Regex errors span several lines with a caret diagram; keep the last line, which says what
/// is wrong.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .unwrap_or(message)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product<'a>(key: &str) -> Option<&'a str> {
        match key {
            "os" => Some("debian"),
            "release" => Some("bookworm"),
            "arch" => Some("amd64"),
            "variant" => Some("cloud"),
            "type" => Some("virtual-machine"),
            _ => None,
        }
    }

    fn holds(text: &str) -> bool {
        match text.parse::<Filter>() {
            Ok(filter) => filter.holds(product),
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn the_four_operators() {
        assert!(holds("os=debian"));
        assert!(!holds("os=ubuntu"));
        assert!(holds("os!=ubuntu"));
        assert!(!holds("os!=debian"));
        assert!(holds("release~^book"));
        assert!(!holds("release~^trix"));
        assert!(holds("variant!~default"));
        assert!(!holds("arch!~64$"));
        assert!(holds("type=virtual-machine"));
        assert!(!holds("type=container"));
    }

    #[test]
    fn a_value_may_hold_operator_characters() {
        let filter: Filter = "release~a=b|book".parse().expect("valid");
        assert!(filter.holds(product));
        assert_eq!(filter.to_string(), "release~a=b|book");
    }

    #[test]
    fn all_must_hold() {
        let filters: Vec<Filter> = ["os=debian", "arch=amd64"]
            .iter()
            .map(|text| text.parse().expect("valid"))
            .collect();
        assert!(Filter::all_hold(&filters, product));
        let filters: Vec<Filter> = ["os=debian", "arch=arm64"]
            .iter()
            .map(|text| text.parse().expect("valid"))
            .collect();
        assert!(!Filter::all_hold(&filters, product));
        assert!(Filter::all_hold(&[], product));
    }

    #[test]
    fn bad_filters_say_what_to_write() {
        let error = |text: &str| text.parse::<Filter>().expect_err(text);
        assert!(matches!(error("debian"), FilterError::NoOperator(_)));
        assert!(matches!(error("os"), FilterError::NoOperator(_)));
        assert!(matches!(error("os<3"), FilterError::NoOperator(_)));
        assert!(matches!(error("=debian"), FilterError::UnknownKey(..)));
        assert!(matches!(
            error("distro=debian"),
            FilterError::UnknownKey(..)
        ));
        assert!(matches!(error("os="), FilterError::EmptyValue(_)));
        assert!(matches!(error("type=vm"), FilterError::BadType(_)));
        let bad_regex = error("os~(unclosed");
        assert!(matches!(bad_regex, FilterError::BadRegex(..)));
        assert_eq!(bad_regex.to_string().lines().count(), 1);
    }
}
