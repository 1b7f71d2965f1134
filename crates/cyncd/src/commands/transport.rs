//! The one interface both command transports implement: the reliable command service
//! ([`super::reliable::Commands`]) and the legacy sender ([`super::legacy::Legacy`]). Front ends
//! ([`super::control`]) pick one per command by the route of the bridge's connection and never
//! see which.
//!
//! Also what the two exchange when a command changes transport ([`Moving`]), and the guard that
//! keeps such a command from overtaking a newer one ([`Latest`]). The rule, in full:
//!
//! - A connection's owner (the transport its route names, fixed at its hello) is the only
//!   transport that writes on it.
//! - A command is bound to a transport when a connection is chosen for a write. Until then it
//!   waits in the command service's queue, which is neutral: the command service writes only on
//!   connections it owns, and when the connection it picks for an attempt belongs to legacy, it
//!   hands the command over unwritten.
//! - A command written stays with the transport that wrote it. A reliable attempt whose
//!   connection is drained or lost is retried (the loss does not use up a retry) through the
//!   owner of the connection the retry lands on; a legacy command whose connection ends before
//!   its 0x7B ends `no_ack` at once (legacy never resends).
//! - A command not yet written when its connection ends (or whose bridge is gone when legacy
//!   comes to write it) goes back to the command service's queue and waits for a connection.
//! - Whatever moves keeps its id, its waiter, its deadline and its attempt count, and is
//!   superseded instead when a newer command for the same target and attribute was submitted
//!   since (it would undo it).

use super::reliable::Completion;
use cync_proto::Target;
use cync_proto::canary::Route;
use cync_proto::delivery::{CommandId, Moved, Request, attribute};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Targets and attributes whose newest command is remembered; when full, all are forgotten
/// (which only lifts the overtaking guard from commands moving at that moment).
pub const MAX_LATEST: usize = 65_536;

/// What a submission gives back: a receiver of the outcome (`None` when nobody waits), or the
/// outcome at once when the transport refused it (`queue_full`).
pub type Submission = Result<Option<oneshot::Receiver<Completion>>, Completion>;

/// A way to deliver commands to devices.
pub trait CommandTransport {
    /// `legacy` or `reliable`.
    fn name(&self) -> &'static str;

    /// Submits a command for bridges on `route`; never waits.
    fn submit_command(&self, req: Request, route: Route, wait: bool) -> Submission;
}

impl CommandTransport for super::reliable::Commands {
    fn name(&self) -> &'static str {
        "reliable"
    }

    fn submit_command(&self, req: Request, _route: Route, wait: bool) -> Submission {
        self.submit(req, wait)
    }
}

impl CommandTransport for super::legacy::Legacy {
    fn name(&self) -> &'static str {
        "legacy"
    }

    fn submit_command(&self, req: Request, route: Route, wait: bool) -> Submission {
        self.submit(req, route.shadow, wait)
    }
}

/// A command changing transport, with what it has used up (see the module documentation).
#[derive(Debug)]
pub struct Moving {
    /// The command.
    pub req: Request,
    /// When it was submitted.
    pub submitted: Instant,
    /// When it must have ended.
    pub deadline: Instant,
    /// Attempts made so far.
    pub attempts: u8,
    /// Of those, attempts whose connection was lost under them.
    pub lost: u8,
    /// Whether some attempt was written.
    pub written: bool,
    /// Who waits for its outcome.
    pub reply: Option<oneshot::Sender<Completion>>,
}

impl Moving {
    /// From a dispatcher whose clock started at `origin`.
    pub fn from_moved(
        moved: Moved,
        origin: Instant,
        reply: Option<oneshot::Sender<Completion>>,
    ) -> Self {
        Self {
            req: moved.req,
            submitted: origin + moved.submitted,
            deadline: origin + moved.deadline,
            attempts: moved.attempts,
            lost: moved.lost,
            written: moved.written,
            reply,
        }
    }

    /// For a dispatcher whose clock started at `origin`, and the waiter.
    pub fn into_moved(self, origin: Instant) -> (Moved, Option<oneshot::Sender<Completion>>) {
        let moved = Moved {
            req: self.req,
            submitted: self.submitted.saturating_duration_since(origin),
            deadline: self.deadline.saturating_duration_since(origin),
            attempts: self.attempts,
            lost: self.lost,
            written: self.written,
        };
        (moved, self.reply)
    }
}

/// The newest command submitted for each target and attribute, across both transports.
#[derive(Debug, Default)]
pub struct Latest {
    newest: Mutex<HashMap<(String, Target, &'static str), CommandId>>,
}

impl Latest {
    /// Notes a command being submitted.
    pub fn note(&self, req: &Request) {
        let mut newest = self
            .newest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (req.home.clone(), req.target, attribute(&req.action));
        if newest.len() >= MAX_LATEST && !newest.contains_key(&key) {
            newest.clear();
        }
        let entry = newest.entry(key).or_insert(req.id);
        *entry = (*entry).max(req.id);
    }

    /// Whether a newer command for the same target and attribute was submitted after `req`.
    pub fn newer(&self, req: &Request) -> bool {
        self.newest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(req.home.clone(), req.target, attribute(&req.action)))
            .is_some_and(|id| *id > req.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cync_proto::Action;

    fn req(id: u64, device: u16, action: Action) -> Request {
        Request {
            id: CommandId(id),
            home: "h".into(),
            target: Target::Device(device),
            action,
            bridges: Vec::new(),
            outlet: None,
        }
    }

    #[test]
    fn a_newer_command_for_the_same_attribute_is_seen() {
        let latest = Latest::default();
        latest.note(&req(5, 1, Action::Power(true)));
        latest.note(&req(3, 1, Action::Power(false)));
        assert!(latest.newer(&req(3, 1, Action::Power(false))));
        assert!(!latest.newer(&req(5, 1, Action::Power(true))));
        // Another attribute, another device: unrelated.
        assert!(!latest.newer(&req(4, 1, Action::Brightness(3))));
        assert!(!latest.newer(&req(4, 2, Action::Power(true))));
    }
}
