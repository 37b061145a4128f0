//! What validation finds: [`Issue`]s and the [`Validation`] that holds them. Values, apart
//! from the engine that produces them, so [`Error`](crate::Error) can carry them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ledger::RowState;

/// One finding of [`Migrator::validate`](crate::Migrator::validate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Issue {
    /// An applied migration's file was edited (its normalised checksum changed).
    Edited {
        /// Version.
        version: u64,
        /// Name.
        name: String,
        /// The checksum in the ledger.
        applied: String,
        /// The checksum of the file now.
        file: String,
    },
    /// The ledger has a migration that no file provides.
    Missing {
        /// Version.
        version: u64,
        /// Name in the ledger.
        name: String,
    },
    /// A pending migration has a lower version than one already applied (a branch merged
    /// late).
    OutOfOrder {
        /// Version.
        version: u64,
        /// Name.
        name: String,
        /// The highest applied version.
        latest_applied: u64,
    },
    /// A migration failed or was left running by a migrator that died.
    Unfinished {
        /// Version.
        version: u64,
        /// Name.
        name: String,
        /// `failed` or `running` (or `pending`).
        state: RowState,
        /// The error recorded, if any.
        error: Option<String>,
    },
    /// An index left INVALID by a failed `CREATE INDEX CONCURRENTLY`.
    InvalidIndex {
        /// The index's name.
        name: String,
    },
}

impl Issue {
    /// Whether `up` must refuse to run until this is fixed: edits and missing files are;
    /// out-of-order migrations are unless allowed; unfinished migrations and invalid indexes
    /// are retried and cleaned by `up` itself.
    pub fn blocks_up(&self, allow_out_of_order: bool) -> bool {
        match self {
            Self::Edited { .. } | Self::Missing { .. } => true,
            Self::OutOfOrder { .. } => !allow_out_of_order,
            Self::Unfinished { .. } | Self::InvalidIndex { .. } => false,
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Edited {
                version,
                name,
                applied,
                file,
            } => write!(
                f,
                "V{version} {name}: edited after it was applied (ledger {}…, file {}…)",
                &applied[..applied.len().min(12)],
                &file[..file.len().min(12)]
            ),
            Self::Missing { version, name } => {
                write!(f, "V{version} {name}: applied but no file provides it")
            }
            Self::OutOfOrder {
                version,
                name,
                latest_applied,
            } => write!(
                f,
                "V{version} {name}: pending below the latest applied version {latest_applied}"
            ),
            Self::Unfinished {
                version,
                name,
                state,
                error,
            } => {
                write!(f, "V{version} {name}: {state}")?;
                if let Some(e) = error {
                    write!(f, " ({e})")?;
                }
                Ok(())
            }
            Self::InvalidIndex { name } => write!(f, "index {name} is INVALID"),
        }
    }
}

/// What [`Migrator::validate`](crate::Migrator::validate) found: a value, empty when everything matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    /// The findings, in version order.
    pub issues: Vec<Issue>,
}

impl Validation {
    /// No findings.
    pub fn is_ok(&self) -> bool {
        self.issues.is_empty()
    }

    /// The findings that keep `up` from running.
    pub fn blocking(&self, allow_out_of_order: bool) -> Validation {
        Validation {
            issues: self
                .issues
                .iter()
                .filter(|i| i.blocks_up(allow_out_of_order))
                .cloned()
                .collect(),
        }
    }
}

impl fmt::Display for Validation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.issues.is_empty() {
            return f.write_str("ok");
        }
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}
