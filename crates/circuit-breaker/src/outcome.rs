//! How a finished call counts: [`Outcome`] and the [`Classifier`] that decides it.

/// How a finished call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(
    clippy::exhaustive_enums,
    reason = "complete by nature: a call counts, counts against, or does not count"
)]
pub enum Outcome {
    /// Counts as a success.
    Success,
    /// Counts as a failure.
    Failure,
    /// Does not count at all (for example a client error such as "invalid request"); a
    /// half-open probe that ends ignored gives its permit back.
    Ignored,
}

/// Decides how a call's result counts. Implemented for every
/// `Fn(&Result<T, E>) -> Outcome`; [`DefaultClassifier`] counts `Err` as failure.
pub trait Classifier<T, E> {
    /// Classify one result.
    fn classify(&self, result: &std::result::Result<T, E>) -> Outcome;
}

impl<T, E, F> Classifier<T, E> for F
where
    F: Fn(&std::result::Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &std::result::Result<T, E>) -> Outcome {
        self(result)
    }
}

/// `Ok` is a success, `Err` a failure.
#[derive(Clone, Copy, Debug, Default)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a unit value users write by name"
)]
pub struct DefaultClassifier;

impl<T, E> Classifier<T, E> for DefaultClassifier {
    fn classify(&self, result: &std::result::Result<T, E>) -> Outcome {
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}
