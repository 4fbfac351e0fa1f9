//! The hook between the status endpoint's POST routes and the promotion
//! controller: a request/reply channel.
//!
//! The controller creates the pair with [`channel`], keeps the
//! [`ControlInbox`] and answers every [`ControlCommand`] it receives; the
//! agent hands the [`ControlHandle`] to the status endpoint. A member
//! without a controller (none running, or it stopped and dropped its inbox)
//! answers the POST routes with 503 and says so.
//!
//! Owns: the request and outcome types and the channel between the two.
//! Must never: decide anything itself (the controller does), or wait for an
//! answer without a time limit.

use crate::model::MemberId;
use serde::Serialize;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What an operator asked for, already authenticated and parsed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ControlRequest {
    /// Planned, zero-loss handover to `to`.
    Switchover { to: MemberId },
    /// Make this member the active. `force`: the operator declares the old
    /// active dead (no quorum needed).
    Promote { force: bool },
    /// Suspend automatic failover cluster-wide.
    Pause,
    /// Resume automatic failover.
    Resume,
}

/// The controller's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum ControlOutcome {
    /// Done (200), with a JSON document describing the result.
    Done(serde_json::Value),
    /// Accepted and under way (202).
    Accepted(serde_json::Value),
    /// Not possible in the cluster's present state (409), with the reason.
    Refused(String),
    /// The request names something that does not exist (400).
    BadRequest(String),
    /// The controller cannot act now (503), with the reason.
    Unavailable(String),
}

/// One request with its reply slot.
#[derive(Debug)]
pub struct ControlCommand {
    pub request: ControlRequest,
    reply: oneshot::Sender<ControlOutcome>,
}

impl ControlCommand {
    /// Answer the request. If the HTTP client has gone away the answer is
    /// dropped (the action itself is not undone).
    pub fn reply(self, outcome: ControlOutcome) {
        let _ = self.reply.send(outcome);
    }
}

/// Why a request did not reach the controller or got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("automatic failover control is not running on this member")]
    NotRunning,
    #[error("the promotion controller did not answer within {} s", .0.as_secs())]
    NoAnswer(Duration),
}

/// The sending side, held by the status endpoint. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ControlHandle {
    tx: mpsc::Sender<ControlCommand>,
}

/// The receiving side, held by the controller.
#[derive(Debug)]
pub struct ControlInbox {
    rx: mpsc::Receiver<ControlCommand>,
}

impl ControlInbox {
    /// The next request; `None` once every handle is gone.
    pub async fn recv(&mut self) -> Option<ControlCommand> {
        self.rx.recv().await
    }
}

/// A connected pair. `capacity` bounds queued requests; beyond it a caller
/// waits (up to its time limit) rather than piling up work.
pub fn channel(capacity: usize) -> (ControlHandle, ControlInbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (ControlHandle { tx }, ControlInbox { rx })
}

impl ControlHandle {
    /// Send `request` and wait up to `within` for the outcome.
    pub async fn submit(
        &self,
        request: ControlRequest,
        within: Duration,
    ) -> Result<ControlOutcome, ControlError> {
        let (reply, answer) = oneshot::channel();
        let cmd = ControlCommand { request, reply };
        let exchange = async {
            self.tx
                .send(cmd)
                .await
                .map_err(|_| ControlError::NotRunning)?;
            // A dropped reply slot means the controller stopped mid-request.
            answer.await.map_err(|_| ControlError::NotRunning)
        };
        tokio::time::timeout(within, exchange)
            .await
            .map_err(|_| ControlError::NoAnswer(within))?
    }

    /// Whether a controller still holds the inbox.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_reach_the_controller_and_answers_come_back() {
        let (h, mut inbox) = channel(4);
        let ctl = tokio::spawn(async move {
            while let Some(cmd) = inbox.recv().await {
                let out = match &cmd.request {
                    ControlRequest::Pause => {
                        ControlOutcome::Done(serde_json::json!({"paused": true}))
                    }
                    other => ControlOutcome::Refused(format!("{other:?} not now")),
                };
                cmd.reply(out);
            }
        });
        let t = Duration::from_secs(5);
        assert_eq!(
            h.submit(ControlRequest::Pause, t).await,
            Ok(ControlOutcome::Done(serde_json::json!({"paused": true})))
        );
        assert!(matches!(
            h.submit(ControlRequest::Resume, t).await,
            Ok(ControlOutcome::Refused(_))
        ));
        drop(h);
        ctl.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_or_silent_controller_is_reported() {
        let (h, inbox) = channel(1);
        drop(inbox);
        assert!(!h.is_running());
        assert_eq!(
            h.submit(ControlRequest::Pause, Duration::from_secs(1))
                .await,
            Err(ControlError::NotRunning)
        );
        let (h, _inbox) = channel(1);
        assert_eq!(
            h.submit(ControlRequest::Pause, Duration::from_millis(50))
                .await,
            Err(ControlError::NoAnswer(Duration::from_millis(50)))
        );
    }
}
