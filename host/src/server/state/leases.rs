//! The queue across processes: claims, owned writes, leases, stored cancels and
//! take-overs.

use super::*;

/// The lease of a running execution: the process that runs it and until
/// when (milliseconds since the Unix epoch). No owner: a run of a server
/// from before leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The execution.
    pub id: String,
    /// The worker id of the process that runs it.
    pub owner: Option<String>,
    /// When the lease ends unless extended.
    pub until: Option<i64>,
}

/// Leased runs: claims, documents written by their owner, cancels and the queue.
pub trait LeaseState {
    /// Saves an execution's document; with `from`, only while the stored
    /// status is still `from` (false otherwise).
    fn save_document(&self, doc: &Execution, from: Option<Status>) -> Result<bool>;

    /// Claims a queued execution for `owner`, leased until `lease_until`:
    /// it becomes `running` with `doc`, unless it has left the queue or its
    /// connector already runs `max` executions in any process (false).
    fn claim(&self, doc: &Execution, connector_id: &str, max: u32, owner: &str, lease_until: i64) -> Result<bool>;

    /// Saves the document of an execution `owner` runs; false once the run
    /// is no longer its own (another process resolved it).
    fn save_owned(&self, doc: &Execution, owner: &str) -> Result<bool>;

    /// Extends `owner`'s leases on `ids` to `until`; the ids whose lease
    /// another process holds now (a run that has just ended, still owned,
    /// is not one of them).
    fn extend_leases(&self, owner: &str, ids: &[String], until: i64) -> Result<Vec<String>>;

    /// The executions `owner` runs whose cancel was asked (of any process).
    fn cancel_requests(&self, owner: &str) -> Result<Vec<String>>;

    /// Asks whichever process runs the execution to cancel it; false when
    /// it does not run.
    fn request_cancel(&self, id: &str) -> Result<bool>;

    /// Every running (or canceling) execution's lease.
    fn leases(&self) -> Result<Vec<Lease>>;

    /// Takes a lost run over for resolving it, only while its lease is
    /// still `seen` (its owner did not extend it meanwhile): its owner
    /// becomes `by`, whose lease has already expired (so that a resolver
    /// that stops half-way leaves it to the next).
    fn take_over(&self, seen: &Lease, by: &str) -> Result<bool>;

    /// Queued executions, oldest first: (id, connector id, is dry run).
    fn queued(&self) -> Result<Vec<(String, String, bool)>>;

    /// How many queued executions of the workspace are ahead of `id`.
    fn queue_position(&self, workspace_id: &str, id: &str) -> Result<u64>;

    /// Takes (or keeps) the sweeper's turn for `owner` until `until`
    /// (milliseconds since the epoch), unless another process holds it past
    /// `now`: one process at a time resolves the runs of lost processes.
    fn sweeper_turn(&self, owner: &str, now: i64, until: i64) -> Result<bool>;

    /// The ids of executions whose cancel was asked, as the asks are made,
    /// when the backend can signal them (the owner then reads
    /// [`LeaseState::cancel_requests`] only as a guarantee, at each
    /// heartbeat); `None` when it cannot and the owner must keep reading.
    fn cancel_signals(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        None
    }
}
