//! The lease traffic of many keys in few store calls: a [`LeasedStore`](super::LeasedStore)
//! queues every lease and give-back call here, and one task per store sends what is queued
//! as one [`Store::lease_many`] and one [`Store::release_many`] (on Redis one script call
//! per Redis Cluster slot, the slots' calls at once).
//!
//! When to send: calls a request waits on (a key's decision that found no allowance) leave
//! at once, in a batch of their own, while fewer than [`URGENT_IN_FLIGHT`] such batches are
//! in flight (else together when one comes back). Background calls (renewals ahead of need,
//! give-backs) leave in batches of at most [`BACKGROUND_ITEMS`], at most
//! [`BACKGROUND_IN_FLIGHT`] at once: at once when no batch of this store is in flight (a
//! lone call waits for nothing), otherwise when `BACKGROUND_ITEMS` are queued, when a batch
//! comes back, or [`LINGER`] after the oldest was queued. Under load a batch carries what
//! queued during the previous one's round trip, and a request's call queues in the store
//! behind at most two of this instance's background batches (before, up to 32 batches of
//! renewals could be ahead of it: 10,000 keys starting at once kept requests waiting past
//! their limiter's 50 ms timeout). So at most six batches are in flight (a hung store):
//! calls then queue, and a call whose request gave up (its limiter's timeout) is dropped
//! unsent, so a hang holds a bounded number of tasks and calls.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseCall, LeaseRequest, LeaseReturn, ReleaseCall};
use crate::quota::Policy;
use crate::store::Store;

/// The batcher takes up to this many queued calls at a time.
pub(super) const MAX_ITEMS: usize = 64;
/// A background batch is sent once this many calls are queued, and carries at most this
/// many: Redis runs a batch's script whole, so a request's call that reaches it behind
/// background batches (of this instance and of the others) waits for their items. On the
/// fleet bench (4 instances, 10,000 keys, one saturated Redis) batches of 64 let ~0.05 % of
/// decisions wait past the limiter's 50 ms timeout; 16 renewed too slowly for keys starting
/// together (2.8 % of decisions waited on Redis); 32 kept both low (docs/benchmarks.md).
const BACKGROUND_ITEMS: usize = 32;
/// A queued call waits at most this long for a batch in flight to come back.
pub(super) const LINGER: Duration = Duration::from_millis(1);
/// Background calls (renewals ahead of need, give-backs) leave in at most this many batches
/// at once, so that a store they slow down (many keys leasing at once) keeps no queue in
/// front of the calls requests wait on.
const BACKGROUND_IN_FLIGHT: usize = 2;
/// Calls requests wait on leave in at most this many batches at once; more queue and leave
/// together when one comes back. With [`BACKGROUND_IN_FLIGHT`] this bounds what a hung
/// store holds: at most six batches, while the queued calls whose request gave up are
/// dropped.
const URGENT_IN_FLIGHT: usize = 4;

/// What to do with a call's answer. Dropped unanswered (its batcher's runtime went away),
/// it is answered with an error, so that a book never waits for it forever.
pub(super) struct Done<T>(Option<Box<dyn FnOnce(Result<T>) + Send>>);

impl<T> Done<T> {
    pub(super) fn new(f: impl FnOnce(Result<T>) + Send + 'static) -> Self {
        Self(Some(Box::new(f)))
    }

    fn answer(mut self, result: Result<T>) {
        if let Some(f) = self.0.take() {
            f(result);
        }
    }
}

impl<T> Drop for Done<T> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(Error::backend(
                "the lease batch was dropped unsent",
                true,
            )));
        }
    }
}

/// What a request's call does with its answer: applies it to its book (whether or not the
/// request still waits: a grant that reached the store is the instance's, not lost with a
/// request that gave up) and makes the request's decision. `None`: the call was never sent
/// (its request gave up first), so the store counted nothing and the book takes its units
/// back.
pub(super) type Settle = Box<dyn FnOnce(Option<Result<Lease>>) -> Result<Decision> + Send>;

/// A request waiting on its call (it may give up: its limiter's timeout). Dropped
/// unanswered (its batcher's runtime went away, maybe after sending it), the call is settled
/// as failed.
pub(super) struct Waiter {
    tx: Option<tokio::sync::oneshot::Sender<Result<Decision>>>,
    settle: Option<Settle>,
}

impl Waiter {
    pub(super) fn new(tx: tokio::sync::oneshot::Sender<Result<Decision>>, settle: Settle) -> Self {
        Self {
            tx: Some(tx),
            settle: Some(settle),
        }
    }

    fn finish(mut self, outcome: Option<Result<Lease>>) {
        if let Some(settle) = self.settle.take() {
            let decision = settle(outcome);
            if let Some(tx) = self.tx.take() {
                let _ = tx.send(decision);
            }
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            let _ = settle(Some(Err(Error::backend(
                "the lease batch was dropped",
                true,
            ))));
        }
    }
}

/// Who gets a lease call's answer: a request waiting on it, or a callback.
pub(super) enum Reply {
    Caller(Waiter),
    Then(Done<Lease>),
}

impl Reply {
    fn answer(self, result: Result<Lease>) {
        match self {
            Self::Caller(w) => w.finish(Some(result)),
            Self::Then(done) => done.answer(result),
        }
    }

    /// The request that waited gave up before its call was sent: it is not sent.
    fn abandoned(&self) -> bool {
        matches!(self, Self::Caller(w) if w.tx.as_ref().is_none_or(|tx| tx.is_closed()))
    }
}

/// One key's lease call.
pub(super) struct LeaseJob {
    pub(super) key: Box<str>,
    pub(super) policy: Policy,
    pub(super) request: LeaseRequest,
    pub(super) done: Reply,
}

/// One key's give-back.
pub(super) struct ReleaseJob {
    pub(super) key: Box<str>,
    pub(super) policy: Policy,
    pub(super) give: LeaseReturn,
    pub(super) done: Done<()>,
}

pub(super) enum Job {
    Lease(LeaseJob),
    Release(ReleaseJob),
}

impl Job {
    /// A request waits on this call: it leaves at once, in a batch of such calls.
    fn urgent(&self) -> bool {
        matches!(
            self,
            Self::Lease(LeaseJob {
                done: Reply::Caller(_),
                ..
            })
        )
    }

    fn abandoned(&self) -> bool {
        matches!(self, Self::Lease(j) if j.done.abandoned())
    }

    /// Settle a job that will not be sent (its request gave up): the store counted nothing.
    fn unsent(self) {
        if let Self::Lease(LeaseJob {
            done: Reply::Caller(w),
            ..
        }) = self
        {
            w.finish(None);
        }
    }
}

/// Take the abandoned jobs out of `queued`, settled as never sent.
fn drop_abandoned(queued: &mut Vec<Job>) {
    let (gone, kept): (Vec<Job>, Vec<Job>) =
        std::mem::take(queued).into_iter().partition(Job::abandoned);
    *queued = kept;
    for job in gone {
        job.unsent();
    }
}

enum Msg {
    Job(Job),
    /// A batch came back (`urgent`: one of calls requests waited on).
    Flushed {
        urgent: bool,
    },
}

/// The queue of a store's calls and the task that sends them.
pub(super) struct Batcher {
    inner: Arc<dyn Store>,
    tx: Mutex<Option<mpsc::UnboundedSender<Msg>>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Batcher {
    pub(super) fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            tx: Mutex::new(None),
        }
    }

    /// Queue `job`, starting the task on the current tokio runtime when there is none (or
    /// its runtime went away). `false` when there is no runtime at all: the job is dropped
    /// (its answer, an error, is given at once).
    pub(super) fn submit(&self, job: Job) -> bool {
        let mut tx = self.tx.lock();
        let mut msg = Msg::Job(job);
        if let Some(t) = tx.as_ref() {
            match t.send(msg) {
                Ok(()) => return true,
                Err(mpsc::error::SendError(m)) => msg = m,
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            *tx = None;
            drop(tx);
            drop(msg);
            return false;
        };
        let (t, rx) = mpsc::unbounded_channel();
        runtime.spawn(run(Arc::clone(&self.inner), rx, t.downgrade()));
        let sent = t.send(msg).is_ok();
        *tx = Some(t);
        sent
    }
}

/// The calls waiting to leave, in two lanes, and the batches of each lane in flight.
struct Lanes {
    /// Calls a request waits on.
    urgent: Vec<Job>,
    /// Renewals ahead of need and give-backs.
    background: Vec<Job>,
    urgent_in_flight: usize,
    background_in_flight: usize,
    /// When the oldest background call has waited [`LINGER`].
    deadline: Instant,
}

impl Lanes {
    fn new() -> Self {
        Self {
            urgent: Vec::new(),
            background: Vec::new(),
            urgent_in_flight: 0,
            background_in_flight: 0,
            deadline: Instant::now(),
        }
    }

    fn is_empty(&self) -> bool {
        self.urgent.is_empty() && self.background.is_empty()
    }

    fn queued(&self) -> usize {
        self.urgent.len() + self.background.len()
    }

    fn in_flight(&self) -> usize {
        self.urgent_in_flight + self.background_in_flight
    }

    fn push(&mut self, job: Job) {
        if job.urgent() {
            self.urgent.push(job);
        } else {
            if self.background.is_empty() {
                self.deadline = Instant::now() + LINGER;
            }
            self.background.push(job);
        }
    }

    fn came_back(&mut self, urgent: bool) {
        if urgent {
            self.urgent_in_flight = self.urgent_in_flight.saturating_sub(1);
        } else {
            self.background_in_flight = self.background_in_flight.saturating_sub(1);
        }
    }

    /// Send what may leave now. Urgent calls leave at once, all together, while fewer
    /// than [`URGENT_IN_FLIGHT`] urgent batches are in flight. Background calls leave at
    /// most [`BACKGROUND_ITEMS`] at a time and [`BACKGROUND_IN_FLIGHT`] batches at once: at once
    /// when nothing is in flight (a lone call waits for nothing), else when `BACKGROUND_ITEMS` are
    /// queued, or the oldest has waited [`LINGER`] or a batch came back (`lingered`). So a
    /// store slowed by renewals (many keys starting at once) queues them here, not in front
    /// of the calls requests wait on.
    fn send(
        &mut self,
        inner: &Arc<dyn Store>,
        tx: &mpsc::WeakUnboundedSender<Msg>,
        lingered: bool,
    ) {
        let idle = self.in_flight() == 0;
        if !self.urgent.is_empty() {
            if self.urgent_in_flight < URGENT_IN_FLIGHT {
                flush(inner, std::mem::take(&mut self.urgent), true, tx);
                self.urgent_in_flight += 1;
            } else if lingered {
                // A hung store: the requests that gave up meanwhile take their calls back.
                drop_abandoned(&mut self.urgent);
            }
        }
        while !self.background.is_empty()
            && self.background_in_flight < BACKGROUND_IN_FLIGHT
            && (idle || lingered || self.background.len() >= BACKGROUND_ITEMS)
        {
            let rest = self
                .background
                .split_off(self.background.len().min(BACKGROUND_ITEMS));
            flush(
                inner,
                std::mem::replace(&mut self.background, rest),
                false,
                tx,
            );
            self.background_in_flight += 1;
            self.deadline = Instant::now() + LINGER;
        }
    }
}

/// The batcher's task: ends when the store (its sender) is gone and the queue is empty.
async fn run(
    inner: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::WeakUnboundedSender<Msg>,
) {
    let mut lanes = Lanes::new();
    loop {
        let msg = if lanes.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout_at(lanes.deadline, rx.recv()).await {
                Ok(msg) => msg,
                Err(_) => {
                    lanes.send(&inner, &tx, true);
                    // Blocked (a lane at its limit): look again in a while, dropping the
                    // calls whose request gave up meanwhile.
                    if !lanes.is_empty() && Instant::now() >= lanes.deadline {
                        lanes.deadline = Instant::now() + LINGER;
                    }
                    continue;
                }
            }
        };
        match msg {
            None => {
                let (urgent, background) = (
                    std::mem::take(&mut lanes.urgent),
                    std::mem::take(&mut lanes.background),
                );
                flush(&inner, urgent, true, &tx);
                flush(&inner, background, false, &tx);
                return;
            }
            Some(Msg::Flushed { urgent }) => {
                // What queued during the round trip leaves with the next one.
                lanes.came_back(urgent);
                lanes.send(&inner, &tx, true);
            }
            Some(Msg::Job(job)) => {
                lanes.push(job);
                while lanes.queued() < MAX_ITEMS {
                    match rx.try_recv() {
                        Ok(Msg::Job(job)) => lanes.push(job),
                        Ok(Msg::Flushed { urgent }) => lanes.came_back(urgent),
                        Err(_) => break,
                    }
                }
                lanes.send(&inner, &tx, false);
            }
        }
    }
}

/// Send `jobs` as one batch, in a task of its own.
fn flush(
    inner: &Arc<dyn Store>,
    jobs: Vec<Job>,
    urgent: bool,
    tx: &mpsc::WeakUnboundedSender<Msg>,
) {
    if jobs.is_empty() {
        return;
    }
    let (inner, tx) = (Arc::clone(inner), tx.upgrade());
    tokio::spawn(async move {
        send(&*inner, jobs).await;
        if let Some(tx) = tx {
            let _ = tx.send(Msg::Flushed { urgent });
        }
    });
}

/// One batch: the leases and the give-backs at once, then every call's answer.
async fn send(inner: &dyn Store, jobs: Vec<Job>) {
    let (mut leases, mut releases) = (Vec::new(), Vec::new());
    for job in jobs {
        match job {
            Job::Lease(j) if j.done.abandoned() => Job::Lease(j).unsent(),
            Job::Lease(j) => leases.push(j),
            Job::Release(j) => releases.push(j),
        }
    }
    let lease_calls: Vec<LeaseCall<'_>> = leases
        .iter()
        .map(|j| LeaseCall::new(&j.key, &j.policy, j.request))
        .collect();
    let release_calls: Vec<ReleaseCall<'_>> = releases
        .iter()
        .map(|j| ReleaseCall::new(&j.key, &j.policy, j.give))
        .collect();
    let (leased, released) = futures::future::join(
        async {
            if lease_calls.is_empty() {
                Vec::new()
            } else {
                inner.lease_many(&lease_calls).await
            }
        },
        async {
            if release_calls.is_empty() {
                Vec::new()
            } else {
                inner.release_many(&release_calls).await
            }
        },
    )
    .await;
    drop((lease_calls, release_calls));
    // A store that answered fewer calls than it was given: the rest are dropped (answered
    // with an error).
    for (job, answer) in leases.into_iter().zip(leased) {
        job.done.answer(answer);
    }
    for (job, answer) in releases.into_iter().zip(released) {
        job.done.answer(answer);
    }
}
