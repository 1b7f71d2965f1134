//! What connection tasks exchange with the command transports above them.
//!
//! The transports (the `commands` layer) ask a connection to write a command with a
//! [`ConnCommand`] on its bounded write queue ([`WRITE_QUEUE`]); the connection reports what
//! happened and what the device answered as [`ConnEvent`]s through [`super::Host::deliver`],
//! addressed to the transport that owns the command or the connection. Defining both here keeps
//! the device layer free of any import from the layers above it.
//!
//! A connection's owner is the transport its route names, decided at its hello and fixed for
//! its whole life. Only the owner writes on it: a [`ConnCommand`] from the other transport is
//! refused ([`ConnEvent::Unsent`]), and every 0x7B and `f9` result goes to the owner.

use cync_proto::canary::Transport;
use cync_proto::delivery::CommandId;
use cync_proto::{Action, ConnId, DeviceStatus, MsgId, Seq, Target};

/// A connection's write queue (commands waiting to be written); a full queue means the device
/// stopped reading, and the transport ends the command `backpressure`.
pub const WRITE_QUEUE: usize = 64;

/// What a transport asks a connection task to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnCommand {
    /// Write this command.
    Send {
        /// The command.
        command: CommandId,
        /// Attempt number.
        attempt: u8,
        /// Target.
        target: Target,
        /// Action.
        action: Action,
    },
    /// Write this command the legacy way (all-zero message id), once.
    SendLegacy {
        /// The command.
        command: CommandId,
        /// Target.
        target: Target,
        /// Action.
        action: Action,
    },
}

/// What a connection task tells the transport that owns a command or the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnEvent {
    /// A command was written as `msg`/`seq`.
    Sent {
        /// The command.
        command: CommandId,
        /// Attempt (0 for a legacy write).
        attempt: u8,
        /// The bridge that wrote it.
        conn: ConnId,
        /// The transport that owns the connection it was written on.
        owner: Transport,
        /// Outer message id.
        msg: MsgId,
        /// Inner seq.
        seq: Seq,
        /// The packet, hex.
        hex: String,
    },
    /// A command was not written: the connection ended first, had not said hello, or is owned
    /// by the other transport.
    Unsent {
        /// The command.
        command: CommandId,
        /// Attempt (0 for a legacy write).
        attempt: u8,
    },
    /// A command could not be built or written.
    SendFailed {
        /// The command.
        command: CommandId,
        /// Attempt.
        attempt: u8,
    },
    /// A 0x7B.
    Ack {
        /// The bridge.
        conn: ConnId,
        /// Echoed message id.
        msg: MsgId,
    },
    /// An `f9` result.
    Result {
        /// The bridge.
        conn: ConnId,
        /// Seq.
        seq: Seq,
        /// Result byte.
        code: u8,
    },
    /// A status report.
    Status {
        /// Home.
        home: String,
        /// The status.
        status: DeviceStatus,
    },
    /// A bridge's connection said hello and is registered: commands waiting for it can go.
    Connected(ConnId),
    /// The connection ended (or a newer one with the same id replaced it). Delivered before
    /// the connection that replaces it is registered.
    Lost(ConnId),
}

impl ConnCommand {
    /// The transport that asked for this write and hears what becomes of it.
    pub fn owner(&self) -> Transport {
        match self {
            Self::Send { .. } => Transport::Reliable,
            Self::SendLegacy { .. } => Transport::Legacy,
        }
    }

    /// The command and its attempt (0 for a legacy write, which has only one).
    pub fn id(&self) -> (CommandId, u8) {
        match self {
            Self::Send {
                command, attempt, ..
            } => (*command, *attempt),
            Self::SendLegacy { command, .. } => (*command, 0),
        }
    }
}
