//! Migration files: names, header directives, normalised checksums, statement splitting,
//! and the set of migrations a [`Migrator`](crate::Migrator) runs.
//!
//! A migration is a pair of files `V{version}__{name}.up.{ext}` and (optionally)
//! `V{version}__{name}.down.{ext}`, where `ext` is `sql` (PostgreSQL), `redis` (Redis
//! commands, one per line) or `lua` (a Redis Lua script). `V{version}__{name}.{ext}` is read
//! as an up migration, so folders written for refinery or Flyway load as they are.
//!
//! The up file may start with header directives in comments:
//!
//! ```sql
//! -- palisade: no-transaction
//! -- palisade: phase = expand
//! -- palisade: backup = users, orders
//! CREATE INDEX CONCURRENTLY users_email ON users (email);
//! ```
//!
//! | directive | meaning |
//! |---|---|
//! | `no-transaction` | run statement by statement outside a transaction (`CREATE INDEX CONCURRENTLY`) |
//! | `phase = expand` / `phase = contract` | an expand/contract step of a blue-green deploy |
//! | `contracts = N` | the expand migration this contract finishes (default: the closest earlier expand) |
//! | `backup = a, b` | back up only these tables (PostgreSQL) or keys (Redis) before running |
//!
//! An unknown directive is an error, so a typo never silently changes how a migration runs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::phase::Phase;

/// How a migration's body is run, from its file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ScriptKind {
    /// `.sql`: SQL for PostgreSQL.
    Sql,
    /// `.redis`: Redis commands, one per line, arguments split on blanks with `"…"` quoting.
    Redis,
    /// `.lua`: one Lua script for Redis, run with the declared `backup` keys as `KEYS`.
    Lua,
}

impl ScriptKind {
    fn from_ext(ext: &str) -> Option<Self> {
        match ext {
            "sql" => Some(Self::Sql),
            "redis" => Some(Self::Redis),
            "lua" => Some(Self::Lua),
            _ => None,
        }
    }

    /// The file extension.
    pub fn ext(self) -> &'static str {
        match self {
            Self::Sql => "sql",
            Self::Redis => "redis",
            Self::Lua => "lua",
        }
    }
}

/// The header directives of a migration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Directives {
    /// `false` for `no-transaction`.
    pub transactional: bool,
    /// The expand/contract phase.
    pub phase: Phase,
    /// For a contract: the expand migration it finishes.
    pub contracts: Option<u64>,
    /// Tables or keys to back up; empty means the whole schema (PostgreSQL) or nothing
    /// (Redis, which has no schema to dump).
    pub backup: Vec<String>,
}

/// One versioned migration: its up script, optional down script and directives.
#[derive(Clone, PartialEq, Eq)]
pub struct Migration {
    version: u64,
    name: String,
    kind: ScriptKind,
    up: String,
    down: Option<String>,
    directives: Directives,
    checksum: String,
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("version", &self.version)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("directives", &self.directives)
            .field("checksum", &self.checksum)
            .field("reversible", &self.down.is_some())
            .finish_non_exhaustive()
    }
}

impl Migration {
    /// A migration from its parts (directives are read from `up`'s header).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty name or a bad directive.
    pub fn new(
        version: u64,
        name: &str,
        kind: ScriptKind,
        up: impl Into<String>,
        down: Option<String>,
    ) -> Result<Self> {
        if name.is_empty() || name.len() > 200 {
            return Err(Error::InvalidConfig(format!(
                "migration {version}: the name must have 1 to 200 characters"
            )));
        }
        let up = up.into();
        let directives = parse_directives(&up)
            .map_err(|e| Error::InvalidConfig(format!("migration {version} ({name}): {e}")))?;
        if directives.contracts.is_some() && directives.phase != Phase::Contract {
            return Err(Error::InvalidConfig(format!(
                "migration {version} ({name}): `contracts` needs `phase = contract`"
            )));
        }
        let checksum = checksum(&up);
        Ok(Self {
            version,
            name: name.to_owned(),
            kind,
            up,
            down,
            directives,
            checksum,
        })
    }

    /// The version (the number after `V`).
    pub fn version(&self) -> u64 {
        self.version
    }
    /// The name (after `__`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// What the scripts are written in.
    pub fn kind(&self) -> ScriptKind {
        self.kind
    }
    /// The up script, as written.
    pub fn up(&self) -> &str {
        &self.up
    }
    /// The down script, if there is one.
    pub fn down(&self) -> Option<&str> {
        self.down.as_deref()
    }
    /// The header directives.
    pub fn directives(&self) -> &Directives {
        &self.directives
    }
    /// Whether it runs in one transaction (no `no-transaction` directive).
    pub fn is_transactional(&self) -> bool {
        self.directives.transactional
    }
    /// Its phase.
    pub fn phase(&self) -> Phase {
        self.directives.phase
    }
    /// SHA-256 (hex) of the up script's [normalised](normalize) text.
    pub fn checksum(&self) -> &str {
        &self.checksum
    }
}

/// The text a checksum is computed over: a leading byte-order mark dropped, line endings
/// made `\n` (CRLF and lone CR included), trailing blanks of each line and trailing empty
/// lines dropped. A file re-saved by an editor with other line endings keeps its checksum;
/// any change a database would see changes it.
pub fn normalize(text: &str) -> String {
    let text = text.trim_start_matches('\u{feff}');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let (line, next) = match rest.find(['\r', '\n']) {
            Some(i) => {
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                (&rest[..i], Some(&rest[i + skip..]))
            }
            None => (rest, None),
        };
        out.push_str(line.trim_end());
        out.push('\n');
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    let keep = out.trim_end_matches('\n').len();
    out.truncate(keep);
    out
}

/// SHA-256 (lower-case hex) of [`normalize`]d text.
pub fn checksum(text: &str) -> String {
    hex::encode(Sha256::digest(normalize(text).as_bytes()))
}

fn parse_directives(up: &str) -> std::result::Result<Directives, String> {
    let mut d = Directives {
        transactional: true,
        ..Directives::default()
    };
    for line in up.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix("--") else {
            break; // the header ends at the first statement
        };
        let Some(body) = comment.trim().strip_prefix("palisade:") else {
            continue;
        };
        for directive in body.split(';') {
            let directive = directive.trim();
            if directive.is_empty() {
                continue;
            }
            let (key, value) = match directive.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (directive, None),
            };
            match (key, value) {
                ("no-transaction", None) => d.transactional = false,
                ("phase", Some(v)) => {
                    d.phase = Phase::parse(v)
                        .ok_or_else(|| format!("unknown phase {v:?} (expand or contract)"))?;
                }
                ("contracts", Some(v)) => {
                    let v = v.strip_prefix('V').unwrap_or(v);
                    d.contracts = Some(
                        v.parse()
                            .map_err(|_| format!("`contracts` needs a version, got {v:?}"))?,
                    );
                }
                ("backup", Some(v)) => {
                    d.backup = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                _ => return Err(format!("unknown directive {directive:?}")),
            }
        }
    }
    Ok(d)
}

/// What a file name says: version, name, up or down, kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileName {
    pub(crate) version: u64,
    pub(crate) name: String,
    pub(crate) down: bool,
    pub(crate) kind: ScriptKind,
}

/// Parse `V{version}__{name}.{up|down}.{ext}` (or `V{version}__{name}.{ext}`). `Ok(None)`
/// for a file that is not a migration at all (another extension); an error for one that
/// looks like a migration but is misnamed.
pub(crate) fn parse_file_name(file: &str) -> Result<Option<FileName>> {
    let Some((stem, ext)) = file.rsplit_once('.') else {
        return Ok(None);
    };
    let Some(kind) = ScriptKind::from_ext(ext) else {
        return Ok(None);
    };
    let (stem, down) = if let Some(s) = stem.strip_suffix(".up") {
        (s, false)
    } else if let Some(s) = stem.strip_suffix(".down") {
        (s, true)
    } else {
        (stem, false)
    };
    let bad = |why: &str| {
        Error::InvalidConfig(format!(
            "{file:?} is not a migration file name ({why}; expected V{{version}}__{{name}}.up.{ext})"
        ))
    };
    let rest = stem.strip_prefix('V').ok_or_else(|| bad("no leading V"))?;
    let (version, name) = rest.split_once("__").ok_or_else(|| bad("no `__`"))?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the version is not a number"));
    }
    let version = version
        .parse()
        .map_err(|_| bad("the version is too large"))?;
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    Ok(Some(FileName {
        version,
        name: name.to_owned(),
        down,
        kind,
    }))
}

/// The migrations a migrator knows, in version order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationSet {
    migrations: BTreeMap<u64, Migration>,
}

impl MigrationSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every migration file in `dir` (not recursive); other files are ignored.
    ///
    /// # Errors
    /// [`Error::Io`] when the folder cannot be read, [`Error::InvalidConfig`] for a
    /// misnamed migration file, a duplicate version, a down file without an up file or a
    /// bad directive.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if parse_file_name(name)?.is_none() {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            files.push((name.to_owned(), text));
        }
        Self::from_files(files)
    }

    /// Migrations from `(file name, contents)` pairs, as [`embed_migrations!`](crate::embed_migrations)
    /// and the [`build`](crate::build) helper produce them. A path before the file name is
    /// ignored.
    ///
    /// # Errors
    /// As [`from_dir`](Self::from_dir).
    pub fn from_embedded(files: &[(&str, &str)]) -> Result<Self> {
        Self::from_files(
            files
                .iter()
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned())),
        )
    }

    fn from_files(files: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut ups: BTreeMap<u64, (FileName, String)> = BTreeMap::new();
        let mut downs: BTreeMap<u64, (FileName, String)> = BTreeMap::new();
        for (path, text) in files {
            let file = path.rsplit(['/', '\\']).next().unwrap_or(&path);
            let Some(parsed) = parse_file_name(file)? else {
                continue;
            };
            let map = if parsed.down { &mut downs } else { &mut ups };
            if let Some((other, _)) = map.get(&parsed.version) {
                return Err(Error::InvalidConfig(format!(
                    "two {} migrations with version {}: {:?} and {:?}",
                    if parsed.down { "down" } else { "up" },
                    parsed.version,
                    other.name,
                    parsed.name
                )));
            }
            map.insert(parsed.version, (parsed, text));
        }
        let mut set = Self::new();
        for (version, (up, text)) in ups {
            let down = match downs.remove(&version) {
                Some((d, dtext)) => {
                    if d.name != up.name || d.kind != up.kind {
                        return Err(Error::InvalidConfig(format!(
                            "the down file of migration {version} is named {:?} ({}), the up file {:?} ({})",
                            d.name,
                            d.kind.ext(),
                            up.name,
                            up.kind.ext()
                        )));
                    }
                    Some(dtext)
                }
                None => None,
            };
            set.push(Migration::new(version, &up.name, up.kind, text, down)?)?;
        }
        if let Some((version, _)) = downs.into_iter().next() {
            return Err(Error::InvalidConfig(format!(
                "migration {version} has a down file but no up file"
            )));
        }
        Ok(set)
    }

    /// Add one migration.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when its version is taken.
    pub fn push(&mut self, migration: Migration) -> Result<()> {
        if let Some(other) = self.migrations.get(&migration.version) {
            return Err(Error::InvalidConfig(format!(
                "two migrations with version {}: {:?} and {:?}",
                migration.version, other.name, migration.name
            )));
        }
        self.migrations.insert(migration.version, migration);
        Ok(())
    }

    /// The migration with this version.
    pub fn get(&self, version: u64) -> Option<&Migration> {
        self.migrations.get(&version)
    }

    /// All migrations, lowest version first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Migration> {
        self.migrations.values()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.migrations.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.migrations.is_empty()
    }

    /// The highest version.
    pub fn latest(&self) -> Option<u64> {
        self.migrations.keys().next_back().copied()
    }

    /// The expand migration a contract migration finishes: its `contracts` directive, or
    /// the closest earlier expand migration.
    pub fn expand_of(&self, contract: &Migration) -> Option<u64> {
        contract.directives.contracts.or_else(|| {
            self.migrations
                .range(..contract.version)
                .rev()
                .find(|(_, m)| m.phase() == Phase::Expand)
                .map(|(v, _)| *v)
        })
    }
}

/// Embed migration files in the binary at compile time with `include_str!` (no proc-macro
/// crate): list the up and down files, relative to the file that calls the macro. The
/// result is a `Result<MigrationSet>`.
///
/// ```
/// let set = palisade_migrate::embed_migrations![
///     "../tests/migrations/V1__users.up.sql",
///     "../tests/migrations/V1__users.down.sql",
///     "../tests/migrations/V2__orders.up.sql",
/// ]
/// .unwrap();
/// assert_eq!(set.latest(), Some(2));
/// ```
///
/// To embed a whole folder without listing it, use the [`build`](crate::build) helper.
#[macro_export]
macro_rules! embed_migrations {
    ($($file:literal),+ $(,)?) => {
        $crate::MigrationSet::from_embedded(&[$(($file, include_str!($file))),+])
    };
}

/// Split SQL into statements at top-level `;`, honouring `'…'` and `E'…'` strings, `"…"`
/// identifiers, `$tag$…$tag$` bodies, `--` and nested `/* */` comments. Statements that
/// are empty or only comments are dropped; the text of each is trimmed. Never panics.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut has_code = false;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let quote = b[i];
                let escapes = quote == b'\'' && i > 0 && matches!(b[i - 1], b'E' | b'e');
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == quote {
                        if b.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                has_code = true;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                // $tag$ where tag is empty or an identifier not starting with a digit.
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(e) if b[e] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                        let tag = &b[i..=e];
                        let body = e + 1;
                        let close = b[body..]
                            .windows(tag.len())
                            .position(|w| w == tag)
                            .map_or(b.len(), |p| body + p + tag.len());
                        i = close;
                    }
                    _ => i += 1,
                }
                has_code = true;
            }
            b';' => {
                if has_code {
                    out.push(sql[start..i].trim());
                }
                i += 1;
                start = i;
                has_code = false;
            }
            c => {
                if !c.is_ascii_whitespace() {
                    has_code = true;
                }
                i += 1;
            }
        }
    }
    if has_code {
        let tail = sql.get(start..).unwrap_or("").trim();
        if !tail.is_empty() {
            out.push(tail);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        let f = parse_file_name("V12__add_users.up.sql").unwrap().unwrap();
        assert_eq!(
            (f.version, f.name.as_str(), f.down),
            (12, "add_users", false)
        );
        let f = parse_file_name("V3__x.down.redis").unwrap().unwrap();
        assert!(f.down);
        assert_eq!(f.kind, ScriptKind::Redis);
        assert_eq!(
            parse_file_name("V7__refinery_style.sql")
                .unwrap()
                .unwrap()
                .version,
            7
        );
        assert!(parse_file_name("README.md").unwrap().is_none());
        assert!(parse_file_name("V1_add.up.sql").is_err());
        assert!(parse_file_name("Vx__add.up.sql").is_err());
        assert!(parse_file_name("V1__.up.sql").is_err());
        assert!(parse_file_name("V99999999999999999999999__a.up.sql").is_err());
    }

    #[test]
    fn crlf_and_trailing_blanks_keep_the_checksum() {
        let lf = "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n";
        let crlf = "\u{feff}CREATE TABLE a (id int);  \r\nINSERT INTO a VALUES (1);\r\n\r\n";
        assert_eq!(checksum(lf), checksum(crlf));
        assert_eq!(
            checksum(lf),
            checksum("CREATE TABLE a (id int);\rINSERT INTO a VALUES (1);")
        );
        assert_ne!(
            checksum(lf),
            checksum("CREATE TABLE a (id bigint);\nINSERT INTO a VALUES (1);\n")
        );
        assert_ne!(
            checksum("a\nb"),
            checksum("a\n\nb"),
            "an inner blank line is an edit"
        );
        assert_ne!(checksum("  a"), checksum("a"), "leading blanks are kept");
    }

    #[test]
    fn directives() {
        let d = parse_directives(
            "-- palisade: no-transaction; phase = contract\n-- palisade: contracts = V4\n-- palisade: backup = users, orders\n\nDROP TABLE x;",
        )
        .unwrap();
        assert!(!d.transactional);
        assert_eq!(d.phase, Phase::Contract);
        assert_eq!(d.contracts, Some(4));
        assert_eq!(d.backup, ["users", "orders"]);
        let d = parse_directives("SELECT 1;\n-- palisade: no-transaction").unwrap();
        assert!(d.transactional, "directives only count in the header");
        assert!(parse_directives("-- palisade: no-transactions").is_err());
        assert!(parse_directives("-- palisade: phase = shrink").is_err());
    }

    #[test]
    fn sets_reject_duplicates_and_orphans() {
        let e = MigrationSet::from_embedded(&[("V1__a.up.sql", ""), ("V1__b.up.sql", "")]);
        assert!(e.is_err());
        let e = MigrationSet::from_embedded(&[("V2__a.down.sql", "")]);
        assert!(e.unwrap_err().to_string().contains("no up file"));
        let s = MigrationSet::from_embedded(&[
            ("dir/V2__b.up.sql", "select 2"),
            ("V1__a.up.sql", "select 1"),
            ("V1__a.down.sql", "select -1"),
            ("notes.txt", "ignored"),
        ])
        .unwrap();
        let v: Vec<u64> = s.iter().map(Migration::version).collect();
        assert_eq!(v, [1, 2]);
        assert_eq!(s.get(1).unwrap().down(), Some("select -1"));
    }

    proptest::proptest! {
        /// Arbitrary file names, headers and SQL never panic; normalising is idempotent and
        /// line endings never change a checksum.
        #[test]
        fn arbitrary_input_never_panics(name in ".{0,40}", text in "(?s).{0,200}") {
            let _ = parse_file_name(&name);
            let _ = parse_directives(&text);
            let _ = split_statements(&text);
            let _ = Migration::new(1, "x", ScriptKind::Sql, text.clone(), None);
            let n = normalize(&text);
            proptest::prop_assert_eq!(&normalize(&n), &n);
            let crlf = n.replace('\n', "\r\n");
            proptest::prop_assert_eq!(checksum(&crlf), checksum(&n));
        }

        /// Plain statements come back one by one, trimmed.
        #[test]
        fn split_statements_keeps_plain_statements(words in proptest::collection::vec("[a-z]{1,8}( [a-z0-9]{1,8}){0,3}", 0..8)) {
            let sql = words.iter().map(|w| format!("{w};")).collect::<Vec<_>>().join("\n");
            proptest::prop_assert_eq!(split_statements(&sql), words.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }

    #[test]
    fn statements() {
        let sql = "CREATE TABLE a (x text default ';');\n-- a; comment\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n/* x; /* nested; */ */ SELECT E'\\';' ; \"we;ird\";\n  ";
        let s = split_statements(sql);
        assert_eq!(s.len(), 4, "{s:?}");
        assert!(s[1].ends_with("LANGUAGE sql"));
        assert_eq!(s[3], "\"we;ird\"");
        assert!(split_statements("-- only a comment;\n ; ;").is_empty());
        assert_eq!(split_statements("SELECT 1"), ["SELECT 1"]);
    }
}
