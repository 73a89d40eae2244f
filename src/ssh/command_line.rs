//! Splits an exec request into words the way a POSIX shell would, without ever running one:
//! blanks separate words; `'…'` is literal; `"…"` is literal except `\"`, `\\`, `` \` ``, `\$`
//! and a backslash-newline; a backslash outside quotes takes the next character literally.
//! Unquoted shell syntax (pipes, redirections, `;`, `&`, `$`, backquotes, parentheses) is
//! refused with a hint, because there is no shell here to give it meaning.

/// Why a command line cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("the command line has an unterminated {0} quote; close it")]
    Unterminated(&'static str),
    #[error("the command line ends in a backslash; remove it or escape it as \\\\")]
    TrailingBackslash,
    #[error(
        "`{0}` is shell syntax, and this server runs no shell: quote it to pass it literally, or do the piping and redirection on your side (e.g. ssh <host> list | head)"
    )]
    ShellSyntax(char),
}

/// Splits `line` into words.
pub fn split(line: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word exists once any character (or an empty pair of quotes) has been seen.
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(SplitError::Unterminated("single")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '`' | '$')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(SplitError::Unterminated("double")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(SplitError::Unterminated("double")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err(SplitError::TrailingBackslash),
            },
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '`' | '$' => {
                return Err(SplitError::ShellSyntax(c));
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Vec<String> {
        split(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(ok("list"), ["list"]);
        assert_eq!(
            ok("  import  a.tar.xz\tb.squashfs "),
            ["import", "a.tar.xz", "b.squashfs"]
        );
        assert_eq!(
            ok("import 'my image.tar.xz'"),
            ["import", "my image.tar.xz"]
        );
        assert_eq!(
            ok(r#"alias add "debian/12 x" f"#),
            ["alias", "add", "debian/12 x", "f"]
        );
        assert_eq!(ok(r"a\ b c"), ["a b", "c"]);
        assert_eq!(ok(r#""say \"hi\" \n""#), [r#"say "hi" \n"#]);
        assert_eq!(ok(r"'it'\''s'"), ["it's"]);
        assert_eq!(ok(r#"'$HOME|x' "a;b" \|"#), ["$HOME|x", "a;b", "|"]);
        assert_eq!(ok("x '' \"\" y"), ["x", "", "", "y"]);
        assert_eq!(ok("a\\\nb"), ["ab"]);
        assert_eq!(ok("--alias=a/b"), ["--alias=a/b"]);
        assert!(ok("").is_empty());
        assert!(ok("   ").is_empty());
    }

    #[test]
    fn refuses_what_needs_a_shell_or_is_unfinished() {
        assert_eq!(split("list | head"), Err(SplitError::ShellSyntax('|')));
        assert_eq!(split("list > out"), Err(SplitError::ShellSyntax('>')));
        assert_eq!(split("whoami; rm -rf /"), Err(SplitError::ShellSyntax(';')));
        assert_eq!(split("echo $(id)"), Err(SplitError::ShellSyntax('$')));
        assert_eq!(split("echo `id`"), Err(SplitError::ShellSyntax('`')));
        assert_eq!(split("a 'b"), Err(SplitError::Unterminated("single")));
        assert_eq!(split("a \"b"), Err(SplitError::Unterminated("double")));
        assert_eq!(split("a \\"), Err(SplitError::TrailingBackslash));
        assert!(
            SplitError::ShellSyntax('|')
                .to_string()
                .contains("runs no shell")
        );
    }
}
