//! A migration's expand/contract phase: a leaf type shared by the files, the ledger and the
//! engine.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The expand/contract phase of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// An ordinary migration.
    #[default]
    None,
    /// Adds what the new app version needs while the old one keeps working.
    Expand,
    /// Removes what only the old app version used; refused while such a version is live.
    Contract,
}

impl Phase {
    /// `none`, `expand` or `contract`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Expand => "expand",
            Self::Contract => "contract",
        }
    }

    /// The inverse of [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "expand" => Some(Self::Expand),
            "contract" => Some(Self::Contract),
            _ => None,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
