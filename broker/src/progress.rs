//! Progress of long offline work (verifying a large audit log, re-wrapping every data key,
//! copying a store), reported to whoever runs it. The library only counts; the command line
//! decides whether to draw (a bar with rate and ETA on a terminal, nothing otherwise).

/// What a count is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes of a file read.
    Bytes,
    /// Records, keys, rows.
    Items,
}

/// Receives progress. Implementations must be cheap: `advance` may be called per record.
pub trait Progress: Sync {
    /// A phase starts: `what` (e.g. "verifying the audit log"), `total` units of `unit`
    /// (0 when unknown).
    fn begin(&self, what: &str, total: u64, unit: Unit);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// The phase is over.
    fn end(&self);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _what: &str, _total: u64, _unit: Unit) {}
    fn advance(&self, _n: u64) {}
    fn end(&self) {}
}
