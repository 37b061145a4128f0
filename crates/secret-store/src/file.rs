//! [`FileProvider`]: secrets from a `.env`, JSON or TOML file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::provider::Provider;
use crate::value::{Fetched, SecretName, Version};

/// A secrets file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FileFormat {
    /// `KEY=value` lines: `#` comments, `export KEY=…`, `'literal'` and `"escaped\n"` values
    /// (both may span lines), unquoted values end at ` #`.
    Dotenv,
    /// One flat JSON object of strings: `{"db/password": "…"}`.
    Json,
    /// One flat TOML table of strings: `"db/password" = "…"`.
    Toml,
}

impl FileFormat {
    /// The format a path's name says: `*.json`, `*.toml`, otherwise `.env`.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Self::Json,
            Some(e) if e.eq_ignore_ascii_case("toml") => Self::Toml,
            _ => Self::Dotenv,
        }
    }
}

/// Secrets from one file, read again on every provider call (the [`Secrets`](crate::Secrets)
/// cache makes that once per TTL), so a file replaced by a deployment tool or a mounted
/// Kubernetes secret is picked up. The version is the file's modification time. Read-only.
///
/// A secret `name` is the key `name` itself, or else its environment form (`db/password` →
/// `DB_PASSWORD`). The file's bytes are zeroized once parsed. Replace the file atomically
/// (write elsewhere, then rename): a half-written file is a parse error.
///
/// Errors: a file that cannot be read is a transient [`Error::Backend`] (it may be being
/// replaced); a file that does not parse is an [`Error::Protocol`] naming the line, never its
/// content.
///
/// ```no_run
/// use palisade_secret_store::FileProvider;
/// let fallback = FileProvider::new("/run/secrets/app.env");
/// ```
#[derive(Debug, Clone)]
pub struct FileProvider {
    name: String,
    path: PathBuf,
    format: FileFormat,
}

impl FileProvider {
    /// The file at `path`, format from its name ([`FileFormat::from_path`]).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            name: "file".to_owned(),
            format: FileFormat::from_path(&path),
            path,
        }
    }

    /// Read the file as `format` whatever its name.
    #[must_use]
    pub fn format(mut self, format: FileFormat) -> Self {
        self.format = format;
        self
    }

    /// Report under another name.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    fn read(&self) -> Result<(HashMap<String, SecretString>, Version)> {
        let io = |e: std::io::Error| {
            Error::backend(
                &self.name,
                std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())),
                true,
            )
        };
        let meta = std::fs::metadata(&self.path).map_err(io)?;
        let stamp = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let bytes = Zeroizing::new(std::fs::read(&self.path).map_err(io)?);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::protocol(&self.name, "the secrets file is not UTF-8"))?;
        let map = parse(self.format, text).map_err(|what| Error::protocol(&self.name, what))?;
        Ok((map, Version::from(u64::try_from(stamp).unwrap_or(u64::MAX))))
    }
}

/// Parse a secrets file's text. Errors name a line or a key, never a value.
pub(crate) fn parse(
    format: FileFormat,
    text: &str,
) -> std::result::Result<HashMap<String, SecretString>, String> {
    match format {
        FileFormat::Dotenv => parse_dotenv(text),
        FileFormat::Json => serde_json::from_str::<HashMap<String, SecretString>>(text)
            .map_err(|e| format!("not a flat JSON object of strings (line {})", e.line())),
        FileFormat::Toml => toml::from_str::<HashMap<String, SecretString>>(text).map_err(|e| {
            let line = e.span().map_or(0, |s| {
                text[..s.start.min(text.len())].lines().count().max(1)
            });
            format!("not a flat TOML table of strings (line {line})")
        }),
    }
}

/// The `.env` dialect described on [`FileFormat::Dotenv`].
pub(crate) fn parse_dotenv(
    text: &str,
) -> std::result::Result<HashMap<String, SecretString>, String> {
    let mut out = HashMap::new();
    let b = text.as_bytes();
    let mut i = 0;
    let mut line = 1usize;
    let err = |line: usize, what: &str| format!("line {line}: {what}");
    while i < b.len() {
        // Leading blanks, blank lines and comments.
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        if b[i] == b'\n' {
            line += 1;
            i += 1;
            continue;
        }
        if b[i] == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if text[i..].starts_with("export ") {
            i += 7;
            while i < b.len() && matches!(b[i], b' ' | b'\t') {
                i += 1;
            }
        }
        let start = i;
        while i < b.len()
            && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b'-' | b'/'))
        {
            i += 1;
        }
        if i == start {
            return Err(err(line, "expected a variable name"));
        }
        let key = &text[start..i];
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(err(line, "expected `=` after the name"));
        }
        i += 1;
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        let key_line = line;
        let mut value = Zeroizing::new(String::new());
        match b.get(i) {
            Some(b'\'') => {
                i += 1;
                let s = i;
                while i < b.len() && b[i] != b'\'' {
                    if b[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
                if i >= b.len() {
                    return Err(err(key_line, "unterminated single-quoted value"));
                }
                value.push_str(&text[s..i]);
                i += 1;
            }
            Some(b'"') => {
                i += 1;
                loop {
                    let Some(c) = text[i..].chars().next() else {
                        return Err(err(key_line, "unterminated double-quoted value"));
                    };
                    i += c.len_utf8();
                    match c {
                        '"' => break,
                        '\\' => {
                            let Some(e) = text[i..].chars().next() else {
                                return Err(err(key_line, "unterminated double-quoted value"));
                            };
                            i += e.len_utf8();
                            match e {
                                'n' => value.push('\n'),
                                'r' => value.push('\r'),
                                't' => value.push('\t'),
                                '"' | '\\' | '$' | '\'' => value.push(e),
                                '\n' => line += 1,
                                other => {
                                    value.push('\\');
                                    value.push(other);
                                }
                            }
                        }
                        '\n' => {
                            line += 1;
                            value.push('\n');
                        }
                        c => value.push(c),
                    }
                }
            }
            _ => {
                let s = i;
                while i < b.len() && b[i] != b'\n' {
                    if b[i] == b'#' && i > s && matches!(b[i - 1], b' ' | b'\t') {
                        break;
                    }
                    i += 1;
                }
                value.push_str(text[s..i].trim_end());
            }
        }
        // After the value: blanks, then a comment or the end of the line.
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r') {
            i += 1;
        }
        if i < b.len() && b[i] == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        }
        if i < b.len() && b[i] != b'\n' {
            return Err(err(line, "unexpected text after the value"));
        }
        out.insert(key.to_owned(), SecretString::from(value.as_str()));
    }
    Ok(out)
}

fn lookup<'a>(
    map: &'a HashMap<String, SecretString>,
    name: &SecretName,
) -> Option<&'a SecretString> {
    map.get(name.as_str()).or_else(|| map.get(&name.env_var()))
}

#[async_trait]
impl Provider for FileProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, name: &SecretName, version: Option<&Version>) -> Result<Option<Fetched>> {
        let (map, current) = self.read()?;
        if version.is_some_and(|v| *v != current) {
            return Ok(None);
        }
        Ok(lookup(&map, name).map(|v| Fetched::new(v.clone(), current)))
    }

    async fn list(&self) -> Result<Vec<SecretName>> {
        let (map, _) = self.read()?;
        Ok(map.keys().filter_map(|k| SecretName::new(k).ok()).collect())
    }

    async fn health(&self) -> Result<()> {
        self.read().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn get(m: &HashMap<String, SecretString>, k: &str) -> String {
        m[k].expose_secret().to_owned()
    }

    #[test]
    fn dotenv_dialect() {
        let m = parse_dotenv(
            "# comment\n\nA=plain value # trailing\nexport B = 'lit # \\n'\nC=\"esc\\n\\\"q\\\" $x\"\nD=\"two\nlines\"  # c\nE=\nF=a#b\r\n",
        )
        .unwrap();
        assert_eq!(get(&m, "A"), "plain value");
        assert_eq!(get(&m, "B"), "lit # \\n");
        assert_eq!(get(&m, "C"), "esc\n\"q\" $x");
        assert_eq!(get(&m, "D"), "two\nlines");
        assert_eq!(get(&m, "E"), "");
        assert_eq!(get(&m, "F"), "a#b");
    }

    #[test]
    fn dotenv_errors_name_the_line_never_the_value() {
        let e = parse_dotenv("A=1\nB='s3cr3t\n").unwrap_err();
        assert_eq!(e, "line 2: unterminated single-quoted value");
        let e = parse_dotenv("A=1\n\nB=\"s3cr3t\" junk\n").unwrap_err();
        assert!(e.starts_with("line 3") && !e.contains("s3cr3t"), "{e}");
        assert!(parse_dotenv("=x").is_err());
    }

    #[test]
    fn json_and_toml_are_flat_maps_of_strings() {
        let m = parse(FileFormat::Json, r#"{"db/password": "p\"w", "X": "y"}"#).unwrap();
        assert_eq!(get(&m, "db/password"), "p\"w");
        let m = parse(FileFormat::Toml, "\"db/password\" = \"pw\"\nX = 'y'\n").unwrap();
        assert_eq!(get(&m, "db/password"), "pw");
        let e = parse(FileFormat::Json, r#"{"a": {"nested": "s3cr3t"}}"#).unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = parse(FileFormat::Toml, "a = 1\nb = \"s3cr3t\"").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}
