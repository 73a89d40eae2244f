//! `metadata.yaml`: the few fields the catalog publishes, validated with messages that name the
//! field and say what was expected.

use serde_json::Value;

/// The parts of `metadata.yaml` that decide where and how an image is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMetadata {
    /// Debian name of the architecture (`amd64`), as the stream's product `arch` wants it.
    pub arch: &'static str,
    /// `creation_date`, unix seconds, UTC.
    pub creation_date: i64,
    pub expiry_date: Option<i64>,
    pub os: String,
    pub release: String,
    pub variant: String,
    pub description: String,
}

/// Kernel and Debian architecture names that LXD 5.0.2 knows, mapped to the Debian name.
const ARCHITECTURES: &[(&str, &str)] = &[
    ("x86_64", "amd64"),
    ("amd64", "amd64"),
    ("aarch64", "arm64"),
    ("arm64", "arm64"),
    ("armv7l", "armhf"),
    ("armv8l", "armhf"),
    ("armhf", "armhf"),
    ("i686", "i386"),
    ("i586", "i386"),
    ("i386", "i386"),
    ("ppc64le", "ppc64el"),
    ("ppc64el", "ppc64el"),
    ("s390x", "s390x"),
    ("riscv64", "riscv64"),
];

/// Maps a kernel or Debian architecture name to the Debian name the stream uses.
pub fn debian_arch(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    ARCHITECTURES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, debian)| *debian)
}

/// True when `name` is any architecture spelling clients might append to an alias.
pub fn is_arch_name(name: &str) -> bool {
    debian_arch(name).is_some()
}

/// Earliest accepted `creation_date`: 2000-01-01. Anything earlier is a zeroed or broken field.
const EARLIEST_CREATION: i64 = 946_684_800;
/// How far in the future a `creation_date` may lie (clock skew between build host and server).
pub const FUTURE_SLACK_SECONDS: i64 = 24 * 3600;

/// Parses and validates `metadata.yaml`; the error is a sentence about the file's content.
pub fn parse(yaml: &[u8], now_unix: i64) -> Result<ImageMetadata, String> {
    let text = std::str::from_utf8(yaml).map_err(|_| "is not UTF-8 text".to_string())?;
    if text.trim().is_empty() {
        return Err("is empty".into());
    }
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| {
        let text = e.to_string();
        let first_line = text.lines().next().unwrap_or("");
        format!(
            "is not valid YAML ({})",
            first_line.strip_prefix("error: ").unwrap_or(first_line)
        )
    })?;
    let Value::Object(top) = doc else {
        return Err(format!("must be a YAML mapping, found {}", kind(&doc)));
    };

    let arch_name = required_string(top.get("architecture"), "architecture")?;
    let arch = debian_arch(&arch_name).ok_or_else(|| {
        format!(
            "has unknown architecture {arch_name:?}; LXD knows x86_64/amd64, aarch64/arm64, \
             armv7l/armhf, i686/i386, ppc64le/ppc64el, s390x and riscv64"
        )
    })?;
    let creation_date = required_unix_time(top.get("creation_date"), "creation_date")?;
    if creation_date < EARLIEST_CREATION {
        return Err(format!(
            "has creation_date {creation_date}, before the year 2000; set it to the build time in unix seconds"
        ));
    }
    if creation_date > now_unix + FUTURE_SLACK_SECONDS {
        return Err(format!(
            "has creation_date {creation_date}, more than a day in the future; check the build host's clock"
        ));
    }
    let expiry_date = match top.get("expiry_date") {
        None | Some(Value::Null) => None,
        value => Some(required_unix_time(value, "expiry_date")?),
    };

    let properties = match top.get("properties") {
        Some(Value::Object(map)) => map,
        None | Some(Value::Null) => {
            return Err("has no `properties` (os, release, variant, description)".into());
        }
        Some(other) => {
            return Err(format!(
                "has `properties` of type {}, expected a mapping",
                kind(other)
            ));
        }
    };
    let property =
        |name: &str| required_string(properties.get(name), &format!("properties.{name}"));
    let os = name_field(&property("os")?, "properties.os")?;
    let release = name_field(&property("release")?, "properties.release")?;
    let variant = match properties.get("variant") {
        None | Some(Value::Null) => "default".to_string(),
        value => name_field(
            &required_string(value, "properties.variant")?,
            "properties.variant",
        )?,
    };
    let description = property("description")?;

    Ok(ImageMetadata {
        arch,
        creation_date,
        expiry_date,
        os,
        release,
        variant,
        description,
    })
}

/// A string field; numbers are accepted as their decimal text (`release: 12`).
fn required_string(value: Option<&Value>, field: &str) -> Result<String, String> {
    match value {
        None | Some(Value::Null) => Err(format!("has no `{field}`")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!("has an empty `{field}`")),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(format!(
            "has `{field}` of type {}, expected a string",
            kind(other)
        )),
    }
}

fn required_unix_time(value: Option<&Value>, field: &str) -> Result<i64, String> {
    let parsed = match value {
        None | Some(Value::Null) => return Err(format!("has no `{field}`")),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(other) => {
            return Err(format!(
                "has `{field}` of type {}, expected unix seconds",
                kind(other)
            ));
        }
    };
    parsed.ok_or_else(|| format!("has `{field}` that is not a whole number of unix seconds"))
}

/// os, release and variant become path components and product ids: lowercase and path-safe.
fn name_field(value: &str, field: &str) -> Result<String, String> {
    let lower = value.to_ascii_lowercase();
    validate_name(&lower).map_err(|problem| format!("has `{field}` {value:?}: {problem}"))?;
    Ok(lower)
}

/// Checks one product name part: 1–64 of `a-z 0-9 . _ + -`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("it must be 1 to 64 characters long");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err("it must start with a letter or a digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '+' | '-'))
    {
        return Err("it may hold only letters, digits, '.', '_', '+' and '-'");
    }
    Ok(())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const GOOD: &str = "architecture: x86_64\ncreation_date: 1764244800\nproperties:\n  os: Debian\n  release: bookworm\n  variant: cloud\n  description: Debian bookworm\n";

    #[test]
    fn parses_distrobuilder_shape() {
        let meta = parse(GOOD.as_bytes(), NOW).unwrap();
        assert_eq!(meta.arch, "amd64");
        assert_eq!(meta.creation_date, 1_764_244_800);
        assert_eq!(meta.os, "debian");
        assert_eq!(meta.release, "bookworm");
        assert_eq!(meta.variant, "cloud");
    }

    #[test]
    fn variant_defaults_and_numbers_are_text() {
        let yaml = "architecture: aarch64\ncreation_date: \"1764244800\"\nproperties: {os: debian, release: 12, description: d}\n";
        let meta = parse(yaml.as_bytes(), NOW).unwrap();
        assert_eq!(
            (meta.arch, meta.release.as_str(), meta.variant.as_str()),
            ("arm64", "12", "default")
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("", "is empty"),
            ("- a\n- b\n", "must be a YAML mapping, found list"),
            ("architecture: [x]\n", "`architecture` of type list"),
            ("creation_date: 1\n", "has no `architecture`"),
            (
                "architecture: loong64\n",
                "unknown architecture \"loong64\"",
            ),
            (
                "architecture: amd64\ncreation_date: 0\n",
                "before the year 2000",
            ),
            (
                "architecture: amd64\ncreation_date: 99999999999\n",
                "in the future",
            ),
            (
                "architecture: amd64\ncreation_date: 1764244800\n",
                "has no `properties`",
            ),
            (
                "architecture: amd64\ncreation_date: 1764244800\nproperties: {os: debian}\n",
                "`properties.release`",
            ),
            (
                "architecture: amd64\ncreation_date: 1764244800\nproperties: {os: debian, release: 12}\n",
                "`properties.description`",
            ),
            (
                "architecture: amd64\ncreation_date: 1764244800\nproperties: {os: 'de/bian', release: 12, description: d}\n",
                "may hold only",
            ),
            (
                "architecture: amd64\ncreation_date: yesterday\n",
                "not a whole number",
            ),
            ("a: [unclosed\n", "not valid YAML"),
        ];
        for (yaml, expected) in cases {
            let err = parse(yaml.as_bytes(), NOW).unwrap_err();
            assert!(
                err.contains(expected),
                "{yaml:?}: got {err:?}, expected {expected:?}"
            );
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    #[test]
    fn maps_kernel_names_to_debian_names() {
        for (kernel, debian) in [
            ("x86_64", "amd64"),
            ("aarch64", "arm64"),
            ("armv7l", "armhf"),
            ("i686", "i386"),
            ("ppc64le", "ppc64el"),
            ("s390x", "s390x"),
            ("riscv64", "riscv64"),
        ] {
            assert_eq!(debian_arch(kernel), Some(debian));
        }
        assert_eq!(debian_arch("loong64"), None);
    }
}
