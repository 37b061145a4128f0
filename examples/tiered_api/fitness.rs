//! The fitness app's data: profiles and workouts in an in-process map that stands in for
//! the service's own database (a real service would query PostgreSQL here), the per-user
//! context built from them, and the training plan made from a context.
// The example and its end-to-end test each use a part.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Most users the stand-in database keeps (a bound, so no request can grow it for ever).
pub const MAX_USERS: usize = 100_000;
/// Most workouts kept per user (the oldest go first).
pub const MAX_WORKOUTS: usize = 500;

/// What a user trains for.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// Longer, easier sessions.
    #[default]
    Endurance,
    /// Heavy, short sessions.
    Strength,
    /// Stretching and balance.
    Mobility,
}

/// A user's editable profile.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Profile {
    /// Shown in the app.
    pub display_name: String,
    /// What the plans aim at.
    pub goal: Goal,
    /// Minutes a week the user wants to train.
    pub weekly_target_minutes: u32,
}

/// One logged workout.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Workout {
    /// Per-user sequence number.
    pub id: u64,
    /// `run`, `swim`, `yoga`, …
    pub kind: String,
    /// How long it lasted.
    pub minutes: u32,
    /// When it was logged, milliseconds since the Unix epoch.
    pub logged_at_ms: u64,
}

/// Everything a request about a user needs, built from the database (the part worth
/// caching: a real service joins several tables for it).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Context {
    /// The user id (the token's subject).
    pub user: String,
    /// The profile.
    pub profile: Profile,
    /// Workouts logged in all.
    pub workouts_total: u64,
    /// Minutes trained in the last seven days.
    pub minutes_last_7_days: u64,
    /// The most recent workout.
    pub last_workout: Option<Workout>,
}

#[derive(Debug)]
struct UserRecord {
    profile: Profile,
    workouts: VecDeque<Workout>,
    total: u64,
}

/// The stand-in database.
#[derive(Debug, Default)]
pub struct Database {
    users: Mutex<HashMap<String, UserRecord>>,
    context_loads: AtomicU64,
}

/// Why a write was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The database holds [`MAX_USERS`] users already.
    Full,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn default_profile(user: &str) -> Profile {
    Profile {
        display_name: user.chars().take(80).collect(),
        goal: Goal::default(),
        weekly_target_minutes: 150,
    }
}

impl Database {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times a context was built from the tables (a cache miss each).
    pub fn context_loads(&self) -> u64 {
        self.context_loads.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, UserRecord>> {
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Build `user`'s context (a user never seen gets a default profile, not stored).
    pub fn load_context(&self, user: &str) -> Context {
        self.context_loads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tiered_api_context_loads_total").increment(1);
        let week_ago = now_ms().saturating_sub(7 * 24 * 3_600_000);
        let users = self.lock();
        match users.get(user) {
            None => Context {
                user: user.to_owned(),
                profile: default_profile(user),
                workouts_total: 0,
                minutes_last_7_days: 0,
                last_workout: None,
            },
            Some(r) => Context {
                user: user.to_owned(),
                profile: r.profile.clone(),
                workouts_total: r.total,
                minutes_last_7_days: r
                    .workouts
                    .iter()
                    .filter(|w| w.logged_at_ms >= week_ago)
                    .map(|w| u64::from(w.minutes))
                    .sum(),
                last_workout: r.workouts.back().cloned(),
            },
        }
    }

    fn record(&self, user: &str, change: impl FnOnce(&mut UserRecord)) -> Result<(), Refused> {
        let mut users = self.lock();
        if !users.contains_key(user) && users.len() >= MAX_USERS {
            return Err(Refused::Full);
        }
        let record = users.entry(user.to_owned()).or_insert_with(|| UserRecord {
            profile: default_profile(user),
            workouts: VecDeque::new(),
            total: 0,
        });
        change(record);
        Ok(())
    }

    /// Replace the profile fields that are `Some`; returns the new profile.
    ///
    /// # Errors
    /// [`Refused::Full`] for a new user when the database is full.
    pub fn update_profile(
        &self,
        user: &str,
        display_name: Option<String>,
        goal: Option<Goal>,
        weekly_target_minutes: Option<u32>,
    ) -> Result<Profile, Refused> {
        let mut profile = None;
        self.record(user, |r| {
            if let Some(name) = display_name {
                r.profile.display_name = name;
            }
            if let Some(goal) = goal {
                r.profile.goal = goal;
            }
            if let Some(minutes) = weekly_target_minutes {
                r.profile.weekly_target_minutes = minutes;
            }
            profile = Some(r.profile.clone());
        })?;
        Ok(profile.unwrap_or_else(|| default_profile(user)))
    }

    /// Log a workout; returns it.
    ///
    /// # Errors
    /// [`Refused::Full`] for a new user when the database is full.
    pub fn log_workout(&self, user: &str, kind: String, minutes: u32) -> Result<Workout, Refused> {
        let mut logged = None;
        self.record(user, |r| {
            r.total += 1;
            let workout = Workout {
                id: r.total,
                kind,
                minutes,
                logged_at_ms: now_ms(),
            };
            if r.workouts.len() == MAX_WORKOUTS {
                r.workouts.pop_front();
            }
            r.workouts.push_back(workout.clone());
            logged = Some(workout);
        })?;
        logged.ok_or(Refused::Full)
    }

    /// The latest `limit` workouts, newest first.
    pub fn workouts(&self, user: &str, limit: usize) -> Vec<Workout> {
        self.lock()
            .get(user)
            .map(|r| r.workouts.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }
}

/// One session of a plan.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Session {
    /// Day of the week, 1 (Monday) to 7.
    pub day: u8,
    /// What to do.
    pub kind: &'static str,
    /// For how long.
    pub minutes: u32,
}

/// A week of training made from a context: the "expensive" route (a real service would
/// ask a model here), which the rate limits weigh more than a read.
pub fn plan(context: &Context) -> Vec<Session> {
    let target = context.profile.weekly_target_minutes.clamp(30, 1_200);
    // Ease back in after a quiet week, push a little after a busy one.
    let done = u32::try_from(context.minutes_last_7_days).unwrap_or(u32::MAX);
    let week = if done >= target {
        target + target / 10
    } else {
        target
    };
    let (kinds, days): (&[&'static str], &[u8]) = match context.profile.goal {
        Goal::Endurance => (&["easy run", "intervals", "long run"], &[1, 3, 6]),
        Goal::Strength => (
            &["upper body", "lower body", "full body", "core"],
            &[1, 2, 4, 5],
        ),
        Goal::Mobility => (&["yoga", "stretching", "balance"], &[2, 4, 7]),
    };
    let each = week / u32::try_from(days.len()).unwrap_or(1);
    kinds
        .iter()
        .zip(days)
        .map(|(kind, day)| Session {
            day: *day,
            kind,
            minutes: each,
        })
        .collect()
}
