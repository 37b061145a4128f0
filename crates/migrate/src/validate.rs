//! The pure engine: comparing the ledger with the migration files (validate) and choosing
//! the steps of `up` and `down`. No I/O; property-tested.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::finding::{Issue, Validation};
use crate::ledger::{AppVersion, LedgerRow};
use crate::migration::{Migration, MigrationSet};
use crate::phase::Phase;

/// Compare the ledger with the files.
pub(crate) fn validate(
    set: &MigrationSet,
    ledger: &[LedgerRow],
    invalid_indexes: &[String],
) -> Validation {
    let rows: BTreeMap<u64, &LedgerRow> = ledger.iter().map(|r| (r.version, r)).collect();
    let latest_applied = ledger
        .iter()
        .filter(|r| r.state.is_done())
        .map(|r| r.version)
        .max();
    let mut issues = Vec::new();
    for row in rows.values() {
        match set.get(row.version) {
            None => {
                if row.state.is_done() {
                    issues.push(Issue::Missing {
                        version: row.version,
                        name: row.name.clone(),
                    });
                }
            }
            Some(m) => {
                if row.state.is_done() && row.checksum != m.checksum() {
                    issues.push(Issue::Edited {
                        version: row.version,
                        name: m.name().to_owned(),
                        applied: row.checksum.clone(),
                        file: m.checksum().to_owned(),
                    });
                }
            }
        }
        if !row.state.is_done() {
            issues.push(Issue::Unfinished {
                version: row.version,
                name: row.name.clone(),
                state: row.state,
                error: row.error.clone(),
            });
        }
    }
    if let Some(latest) = latest_applied {
        for m in set.iter().filter(|m| m.version() < latest) {
            let done = rows.get(&m.version()).is_some_and(|r| r.state.is_done());
            let unfinished = rows.contains_key(&m.version());
            if !done && !unfinished {
                issues.push(Issue::OutOfOrder {
                    version: m.version(),
                    name: m.name().to_owned(),
                    latest_applied: latest,
                });
            }
        }
    }
    issues.sort_by_key(|i| match i {
        Issue::Edited { version, .. }
        | Issue::Missing { version, .. }
        | Issue::OutOfOrder { version, .. }
        | Issue::Unfinished { version, .. } => *version,
        Issue::InvalidIndex { .. } => u64::MAX,
    });
    issues.extend(
        invalid_indexes
            .iter()
            .map(|name| Issue::InvalidIndex { name: name.clone() }),
    );
    Validation { issues }
}

/// Which way a step goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Apply the up script.
    Up,
    /// Apply the down script.
    Down,
}

impl Direction {
    /// `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// The migrations `up` would apply, lowest first, up to `to` (inclusive; `None` = all):
/// those without a ledger row and those whose row is unfinished (retried). Refuses on
/// blocking findings.
///
/// # Errors
/// [`Error::Validation`] with the blocking findings; [`Error::InvalidConfig`] for a target
/// version no file has.
pub(crate) fn plan_up<'a>(
    set: &'a MigrationSet,
    ledger: &[LedgerRow],
    to: Option<u64>,
    allow_out_of_order: bool,
) -> Result<Vec<&'a Migration>> {
    if let Some(to) = to
        && set.get(to).is_none()
    {
        return Err(Error::InvalidConfig(format!(
            "no migration has version {to}"
        )));
    }
    let blocking = validate(set, ledger, &[]).blocking(allow_out_of_order);
    if !blocking.is_ok() {
        return Err(Error::Validation(blocking));
    }
    let rows: BTreeMap<u64, &LedgerRow> = ledger.iter().map(|r| (r.version, r)).collect();
    Ok(set
        .iter()
        .filter(|m| to.is_none_or(|to| m.version() <= to))
        .filter(|m| !rows.get(&m.version()).is_some_and(|r| r.state.is_done()))
        .collect())
}

/// The migrations `down` would revert to leave `to` the highest applied version, highest
/// first.
///
/// # Errors
/// [`Error::Irreversible`] for one without a down script, [`Error::Validation`] when an
/// applied migration's file is missing or edited.
pub(crate) fn plan_down<'a>(
    set: &'a MigrationSet,
    ledger: &[LedgerRow],
    to: u64,
) -> Result<Vec<&'a Migration>> {
    let mut rows: Vec<&LedgerRow> = ledger
        .iter()
        .filter(|r| r.version > to && r.state.is_done())
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.version));
    let blocking: Vec<Issue> = validate(set, ledger, &[])
        .issues
        .into_iter()
        .filter(|i| match i {
            Issue::Edited { version, .. } | Issue::Missing { version, .. } => *version > to,
            _ => false,
        })
        .collect();
    if !blocking.is_empty() {
        return Err(Error::Validation(Validation { issues: blocking }));
    }
    rows.iter()
        .map(|r| {
            let m = set
                .get(r.version)
                .ok_or_else(|| Error::InvalidConfig(format!("no file for {}", r.version)))?;
            if m.down().is_none() {
                return Err(Error::Irreversible {
                    version: m.version(),
                    name: m.name().to_owned(),
                });
            }
            Ok(m)
        })
        .collect()
}

/// Why a contract migration may not run yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Blocked {
    /// The contract migration.
    pub version: u64,
    /// The expand migration it finishes.
    pub expand: u64,
    /// Live app versions built before that expand migration.
    pub live: Vec<String>,
}

/// `Some` when `m` is a contract migration and an app version built before its expand
/// migration is still live.
pub(crate) fn contract_blocked(
    set: &MigrationSet,
    m: &Migration,
    apps: &[AppVersion],
) -> Option<Blocked> {
    if m.phase() != Phase::Contract {
        return None;
    }
    let expand = set.expand_of(m).unwrap_or(m.version());
    let live: Vec<String> = apps
        .iter()
        .filter(|a| a.live && a.built_against < expand)
        .map(|a| a.version.clone())
        .collect();
    (!live.is_empty()).then(|| Blocked {
        version: m.version(),
        expand,
        live,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::RowState;
    use crate::migration::ScriptKind;
    use proptest::prelude::*;

    fn set(versions: &[u64]) -> MigrationSet {
        let mut s = MigrationSet::new();
        for v in versions {
            s.push(
                Migration::new(
                    *v,
                    &format!("m{v}"),
                    ScriptKind::Sql,
                    format!("SELECT {v};"),
                    Some(format!("SELECT -{v};")),
                )
                .unwrap(),
            )
            .unwrap();
        }
        s
    }

    fn row(s: &MigrationSet, v: u64, state: RowState) -> LedgerRow {
        let m = s.get(v).unwrap();
        LedgerRow::new(v, m.name(), m.checksum(), state, Phase::None, "t")
    }

    #[test]
    fn finds_edits_missing_and_out_of_order() {
        let s = set(&[1, 2, 3, 4]);
        let mut ledger = vec![row(&s, 1, RowState::Applied), row(&s, 3, RowState::Applied)];
        ledger[0].checksum = "0".repeat(64);
        ledger.push(LedgerRow::new(
            9,
            "gone",
            "x",
            RowState::Applied,
            Phase::None,
            "t",
        ));
        let v = validate(&s, &ledger, &["idx".into()]);
        let kinds: Vec<String> = v
            .issues
            .iter()
            .map(|i| format!("{i:?}").split(' ').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            kinds,
            [
                "Edited",
                "OutOfOrder",
                "OutOfOrder",
                "Missing",
                "InvalidIndex"
            ],
            "{v}"
        );
        assert!(matches!(
            plan_up(&s, &ledger, None, true),
            Err(Error::Validation(_))
        ));
    }

    #[test]
    fn up_retries_unfinished_and_down_reverses() {
        let s = set(&[1, 2, 3]);
        let ledger = vec![row(&s, 1, RowState::Applied), row(&s, 2, RowState::Failed)];
        let up: Vec<u64> = plan_up(&s, &ledger, None, false)
            .unwrap()
            .iter()
            .map(|m| m.version())
            .collect();
        assert_eq!(up, [2, 3]);
        let up: Vec<u64> = plan_up(&s, &ledger, Some(2), false)
            .unwrap()
            .iter()
            .map(|m| m.version())
            .collect();
        assert_eq!(up, [2]);
        let ledger: Vec<LedgerRow> = (1..=3).map(|v| row(&s, v, RowState::Applied)).collect();
        let down: Vec<u64> = plan_down(&s, &ledger, 1)
            .unwrap()
            .iter()
            .map(|m| m.version())
            .collect();
        assert_eq!(down, [3, 2]);
        assert!(plan_down(&s, &ledger, 3).unwrap().is_empty());
    }

    #[test]
    fn contract_waits_for_old_apps() {
        let mut s = MigrationSet::new();
        s.push(
            Migration::new(
                1,
                "expand",
                ScriptKind::Sql,
                "-- palisade: phase = expand\nSELECT 1",
                None,
            )
            .unwrap(),
        )
        .unwrap();
        s.push(
            Migration::new(
                2,
                "contract",
                ScriptKind::Sql,
                "-- palisade: phase = contract\nSELECT 2",
                None,
            )
            .unwrap(),
        )
        .unwrap();
        let c = s.get(2).unwrap();
        let blue = AppVersion {
            version: "blue".into(),
            built_against: 0,
            live: true,
        };
        let green = AppVersion {
            version: "green".into(),
            built_against: 2,
            live: true,
        };
        let b = contract_blocked(&s, c, &[blue.clone(), green.clone()]).unwrap();
        assert_eq!(
            (b.expand, b.live.as_slice()),
            (1, ["blue".to_owned()].as_slice())
        );
        let retired = AppVersion {
            live: false,
            ..blue
        };
        assert!(contract_blocked(&s, c, &[retired, green]).is_none());
    }

    proptest! {
        /// After applying what `plan_up` returns, nothing is pending and validation is clean;
        /// `plan_down` to v then leaves exactly the migrations <= v.
        #[test]
        fn up_then_down_is_consistent(versions in proptest::collection::btree_set(1u64..50, 1..12), applied_mask in any::<u64>(), down_to in 0u64..50) {
            let versions: Vec<u64> = versions.into_iter().collect();
            let s = set(&versions);
            // Applied: a prefix-closed subset (a correct history).
            let k = (applied_mask as usize) % (versions.len() + 1);
            let mut ledger: Vec<LedgerRow> = versions[..k].iter().map(|v| row(&s, *v, RowState::Applied)).collect();
            for m in plan_up(&s, &ledger, None, false).unwrap() {
                ledger.push(row(&s, m.version(), RowState::Applied));
            }
            prop_assert!(validate(&s, &ledger, &[]).is_ok());
            prop_assert!(plan_up(&s, &ledger, None, false).unwrap().is_empty());
            let reverted: Vec<u64> = plan_down(&s, &ledger, down_to).unwrap().iter().map(|m| m.version()).collect();
            ledger.retain(|r| !reverted.contains(&r.version));
            prop_assert!(ledger.iter().all(|r| r.version <= down_to));
            prop_assert!(validate(&s, &ledger, &[]).is_ok());
        }

        /// No ledger content makes validation or planning panic.
        #[test]
        fn arbitrary_ledgers_never_panic(rows in proptest::collection::vec((0u64..20, "[a-f0-9]{0,64}", 0usize..5), 0..20), to in proptest::option::of(0u64..20)) {
            let s = set(&[1, 3, 5, 7]);
            let states = [RowState::Pending, RowState::Running, RowState::Failed, RowState::Applied, RowState::Baseline];
            let ledger: Vec<LedgerRow> = rows.into_iter().map(|(v, c, st)| LedgerRow::new(v, "x", &c, states[st], Phase::None, "t")).collect();
            let _ = validate(&s, &ledger, &[]).to_string();
            let _ = plan_up(&s, &ledger, to, false);
            let _ = plan_down(&s, &ledger, to.unwrap_or(0));
        }
    }
}
