//! The organisations' data: projects in an in-process map that stands in for the service's
//! own database (a real service queries PostgreSQL here), and the reports computed from
//! them — the slow reads worth caching per organisation.
// The example and its end-to-end test each use a part.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Where a project stands.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Being planned.
    Planned,
    /// Under way.
    Active,
    /// Finished.
    Done,
}

/// One project of an organisation.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Project {
    /// Its id within the organisation.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Where it stands.
    pub status: Status,
    /// Its budget, in cents.
    pub budget_cents: u64,
}

/// The reports an organisation can ask for.
pub const REPORTS: [&str; 2] = ["summary", "budget"];

/// The stand-in database: organisations and their projects.
#[derive(Debug)]
pub struct Database {
    orgs: Mutex<BTreeMap<String, Vec<Project>>>,
    reads: AtomicU64,
}

/// Why a change was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No such organisation or project.
    NotFound,
}

impl Database {
    /// Two organisations, `acme` and `globex`, with a few projects each.
    pub fn seeded() -> Self {
        let project = |id, name: &str, status, budget_cents| Project {
            id,
            name: name.to_owned(),
            status,
            budget_cents,
        };
        let mut orgs = BTreeMap::new();
        orgs.insert(
            "acme".to_owned(),
            vec![
                project(1, "rocket skates", Status::Active, 1_200_000),
                project(2, "giant magnet", Status::Planned, 450_000),
                project(3, "portable hole", Status::Done, 90_000),
            ],
        );
        orgs.insert(
            "globex".to_owned(),
            vec![
                project(1, "doomsday device", Status::Active, 9_900_000),
                project(2, "hammock district", Status::Planned, 300_000),
            ],
        );
        Self {
            orgs: Mutex::new(orgs),
            reads: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Project>>> {
        self.orgs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many reads reached the tables (each one a cache miss upstream).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tenant_api_database_reads_total").increment(1);
    }

    /// Whether the organisation exists.
    pub fn has_org(&self, org: &str) -> bool {
        self.lock().contains_key(org)
    }

    /// Every organisation's name.
    pub fn orgs(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Every project of `org`.
    pub fn projects(&self, org: &str) -> Option<Vec<Project>> {
        self.read();
        self.lock().get(org).cloned()
    }

    /// Change a project's fields that are `Some`; returns it.
    ///
    /// # Errors
    /// [`Refused::NotFound`] for an unknown organisation or project.
    pub fn update_project(
        &self,
        org: &str,
        id: u32,
        name: Option<String>,
        status: Option<Status>,
        budget_cents: Option<u64>,
    ) -> Result<Project, Refused> {
        let mut orgs = self.lock();
        let project = orgs
            .get_mut(org)
            .and_then(|ps| ps.iter_mut().find(|p| p.id == id))
            .ok_or(Refused::NotFound)?;
        if let Some(name) = name {
            project.name = name;
        }
        if let Some(status) = status {
            project.status = status;
        }
        if let Some(budget) = budget_cents {
            project.budget_cents = budget;
        }
        Ok(project.clone())
    }

    /// A report over `org`'s projects (`summary`: projects and budget per status;
    /// `budget`: each project's share of the total), `None` for an unknown org or report.
    pub fn report(&self, org: &str, name: &str) -> Option<serde_json::Value> {
        let projects = self.projects(org)?;
        let total: u64 = projects.iter().map(|p| p.budget_cents).sum();
        match name {
            "summary" => {
                let mut by_status: BTreeMap<Status, (u64, u64)> = BTreeMap::new();
                for p in &projects {
                    let entry = by_status.entry(p.status).or_default();
                    entry.0 += 1;
                    entry.1 += p.budget_cents;
                }
                Some(serde_json::json!({
                    "projects": projects.len(),
                    "budget_cents": total,
                    "by_status": by_status
                        .iter()
                        .map(|(s, (n, b))| serde_json::json!({ "status": s, "projects": n, "budget_cents": b }))
                        .collect::<Vec<_>>(),
                }))
            }
            "budget" => Some(serde_json::json!({
                "budget_cents": total,
                "shares": projects
                    .iter()
                    .map(|p| serde_json::json!({
                        "project": p.id,
                        "name": p.name,
                        "percent": if total == 0 { 0.0 } else { (p.budget_cents as f64) * 100.0 / (total as f64) },
                    }))
                    .collect::<Vec<_>>(),
            })),
            _ => None,
        }
    }
}
