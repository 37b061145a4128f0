//! A build-script helper that embeds a whole folder of migrations without listing it and
//! without a proc-macro crate.
//!
//! In `build.rs` (with `palisade-migrate` also under `[build-dependencies]`, ideally with
//! `default-features = false`):
//!
//! ```no_run
//! // build.rs
//! palisade_migrate::build::embed_dir("migrations").unwrap();
//! ```
//!
//! and in the crate:
//!
//! ```ignore
//! let set = palisade_migrate::include_migrations!()?;
//! ```
//!
//! The helper writes `$OUT_DIR/palisade_migrations.rs`, a list of `(file name,
//! include_str!(absolute path))` pairs, and tells cargo to rebuild when the folder changes.

use std::path::Path;

use crate::error::{Error, Result};
use crate::migration::parse_file_name;

/// The generated file's name in `OUT_DIR`.
pub const FILE_NAME: &str = "palisade_migrations.rs";

/// The Rust source of the list for the migration files of `dir` (sorted by name).
///
/// # Errors
/// [`Error::Io`] when the folder cannot be read, [`Error::InvalidConfig`] for a misnamed
/// migration file.
pub fn generate(dir: impl AsRef<Path>) -> Result<String> {
    let dir = dir.as_ref();
    let dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let path = entry.map_err(|e| Error::io(&dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if path.is_file() && parse_file_name(name)?.is_some() {
            files.push((name.to_owned(), path.display().to_string()));
        }
    }
    files.sort();
    let mut out = String::from("&[\n");
    for (name, path) in files {
        out.push_str(&format!("    ({name:?}, include_str!({path:?})),\n"));
    }
    out.push(']');
    Ok(out)
}

/// Generate the list for `dir` into `$OUT_DIR` and print `cargo:rerun-if-changed` for it.
/// Call from a build script.
///
/// # Errors
/// As [`generate`]; [`Error::InvalidConfig`] outside a build script (no `OUT_DIR`).
pub fn embed_dir(dir: impl AsRef<Path>) -> Result<()> {
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| {
        Error::InvalidConfig("OUT_DIR is not set: call embed_dir from build.rs".into())
    })?;
    let source = generate(dir.as_ref())?;
    let target = Path::new(&out_dir).join(FILE_NAME);
    std::fs::write(&target, source).map_err(|e| Error::io(&target, e))?;
    println!("cargo:rerun-if-changed={}", dir.as_ref().display());
    Ok(())
}

/// The migrations [`build::embed_dir`](crate::build::embed_dir) listed in the build
/// script, as a `Result<MigrationSet>`.
#[macro_export]
macro_rules! include_migrations {
    () => {
        $crate::MigrationSet::from_embedded(include!(concat!(
            env!("OUT_DIR"),
            "/palisade_migrations.rs"
        )))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_an_include_list_of_the_migration_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("V2__b.up.sql"), "SELECT 2;").unwrap();
        std::fs::write(dir.path().join("V1__a.up.sql"), "SELECT 1;").unwrap();
        std::fs::write(dir.path().join("README.md"), "not a migration").unwrap();
        let source = generate(dir.path()).unwrap();
        let lines: Vec<&str> = source.lines().collect();
        assert_eq!(lines.len(), 4, "{source}");
        assert!(
            lines[1].starts_with("    (\"V1__a.up.sql\", include_str!(\""),
            "{source}"
        );
        assert!(lines[2].contains("V2__b.up.sql"));
        assert!(!source.contains("README"));
        std::fs::write(dir.path().join("V3_typo.up.sql"), "").unwrap();
        assert!(
            generate(dir.path()).is_err(),
            "a misnamed migration is an error"
        );
        assert!(
            embed_dir(dir.path()).is_err(),
            "outside a build script there is no OUT_DIR"
        );
    }
}
