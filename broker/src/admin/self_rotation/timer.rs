//! The leader's tick: the revocations owed first, then every binding whose secret is due for
//! self-rotation, at most one automatic attempt per binding an hour.

use std::sync::Arc;

use crate::admin::{AdminService, RotationState};

impl AdminService {
    /// Self-rotates every binding whose provider says its secret is due (its last probe saw
    /// it close to expiry), after making the revocations earlier rotations still owe.
    /// Returns how many were rotated.
    pub async fn rotate_due(self: &Arc<Self>) -> usize {
        let revoked = self.revoke_owed().await;
        if revoked > 0 {
            tracing::info!(
                revoked,
                "made upstream revocations owed by earlier self-rotations"
            );
        }
        // One pass over the bindings, a row at a time: only the due ones are held.
        let registry = self.core.registry.clone();
        let due = move |b: &crate::model::Binding| {
            b.status == crate::model::Status::Active
                && b.trust_facts.as_ref().is_some_and(|facts| {
                    registry
                        .get(&b.provider)
                        .and_then(|p| p.self_rotation().map(|r| r.due(facts)))
                        .unwrap_or(false)
                })
        };
        let bindings = match self.core.records.bindings_where(due).await {
            Ok(b) => b,
            Err(e) => {
                // As the other periodic jobs: said, and tried again at the next tick.
                tracing::warn!(error = %e, "could not read the bindings due for rotation; will retry");
                return 0;
            }
        };
        let mut rotated = 0;
        for b in bindings {
            // A replica that lost the lead meanwhile leaves the rest to the new leader; a
            // stopping one leaves them to the next start.
            if !self.core.replica.is_leader() || self.core.is_stopping() {
                break;
            }
            // A pending version that passed its probe, or was not probed yet (an intake's
            // submission whose probe could not run, a successor a stopped broker left),
            // waits for an operator: said once an hour, as the secret nears its expiry. It
            // does not spend the hour's attempt: once handled, the rotation runs at the next
            // tick.
            if let Some(p) = b.pending_secret_version {
                let waits = matches!(self.core.records.secret_version(&b.id, p).await,
                    Ok(Some(v)) if v.value.worth_keeping());
                if waits {
                    let said = self.rotations.lock().ok().is_none_or(|mut r| {
                        RotationState::within_the_hour(&mut r.last_warned, b.id.as_str())
                    });
                    if !said {
                        tracing::warn!(binding = %b.id, pending = p, "the secret is due for rotation but pending version waits: promote or destroy it (credbroker secret promote / destroy), or the secret expires in service");
                    }
                    continue;
                }
            }
            // At most one automatic attempt per binding an hour (a failing upstream, or one
            // that hands out PATs already close to expiry, is not hammered).
            let recent = self.rotations.lock().ok().is_some_and(|mut r| {
                RotationState::within_the_hour(&mut r.last_tried, b.id.as_str())
            });
            if recent {
                continue;
            }
            let request_id = crate::server::new_request_id();
            match self
                .self_rotate(b.id.as_str(), "credbroker:rotation", &request_id)
                .await
            {
                Ok(_) => {
                    rotated += 1;
                    tracing::info!(binding = %b.id, "secret rotated before expiry");
                }
                Err((e, _)) => {
                    tracing::warn!(binding = %b.id, code = %e.code, error = %e.message, "automatic rotation failed; will retry");
                }
            }
        }
        rotated
    }
}
