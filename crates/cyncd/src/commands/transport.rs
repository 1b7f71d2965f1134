//! The one interface both command transports implement: the reliable command service
//! ([`super::reliable::Commands`]) and the legacy sender ([`super::legacy::Legacy`]). Front ends
//! ([`super::control`]) pick one per command by the route of the bridge's connection and never
//! see which.

use super::reliable::Completion;
use cync_proto::canary::Route;
use cync_proto::delivery::Request;
use tokio::sync::oneshot;

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
