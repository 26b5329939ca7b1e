//! What a link may still do once a submission has started: whether it still acts on its
//! connection (tenant and binding), whether a refusal means it died meanwhile, and the
//! clean-up of a version it wrote and could not use.

use crate::admin::AdminService;
use crate::api_error::{ApiError, ErrorCode};
use crate::store::records::{IntakeLink, Stored};

impl AdminService {
    /// Destroys pending version `version` that an intake submission wrote and could not use
    /// (audited). A version promoted meanwhile is active and refused; one replaced is gone.
    pub(super) async fn drop_intake_pending(
        &self,
        link: &IntakeLink,
        request_id: &str,
        version: u32,
        why: &str,
    ) -> bool {
        let _guard = self.lock.lock().await;
        let plan = self
            .plan_secret_destroy(&link.binding, Some(version), false, Some(link.made()))
            .await;
        match self
            .commit_plan(
                Self::intake_event(link, request_id, "secret.destroy"),
                plan,
                why,
            )
            .await
        {
            Ok(_) => true,
            // Gone already (destroyed by an operator, or replaced): nothing is left staged.
            Err((e, _)) if e.code == ErrorCode::UnknownRecord => true,
            Err((e, _)) => {
                tracing::warn!(link = %link.id, code = %e.code, version, "the pending version of an intake submission could not be destroyed");
                false
            }
        }
    }

    /// The tenant a link was made for, while the link may still act on its connection: the
    /// binding the same (id, tenant and creation: an id removed and re-created, perhaps for
    /// another tenant, is not) and not disabled, its tenant active. A customer must not
    /// replace the credential of a connection an operator has switched off, nor have it
    /// activated.
    pub(super) async fn link_target(
        &self,
        link: &IntakeLink,
    ) -> Result<Stored<crate::model::Tenant>, ApiError> {
        let gone = || {
            ApiError::new(
                ErrorCode::Conflict,
                "the intake link's connection is gone or disabled",
            )
        };
        // Gone is gone; a store that cannot be read is not (the caller answers "retry").
        let gone_if_unknown = |e: ApiError| {
            if matches!(
                e.code,
                ErrorCode::UnknownRecord
                    | ErrorCode::BadRequest
                    | ErrorCode::BindingInactive
                    | ErrorCode::TenantInactive
            ) {
                gone()
            } else {
                e
            }
        };
        let binding = self
            .binding_or_404(&link.binding)
            .await
            .map_err(gone_if_unknown)?;
        let b = &binding.value;
        if b.made() != link.made() {
            return Err(gone());
        }
        let tenant = self.serving_tenant(b).await.map_err(gone_if_unknown)?;
        Ok(tenant)
    }

    /// Whether `e`, refusing a step a submission takes on its link's behalf, means the link
    /// died meanwhile: its creator can no longer act (`operator_required`), or a conflict
    /// while the link no longer admits a submission (revoked, expired, used up) or may no
    /// longer act on its connection (disabled, removed). Any other conflict (the binding
    /// changed under the write) is not the link's.
    pub(super) async fn link_died(&self, e: &ApiError, key: &str, link: &IntakeLink) -> bool {
        e.code == ErrorCode::OperatorRequired
            || (matches!(e.code, ErrorCode::Conflict | ErrorCode::UnknownRecord)
                && (!self.intake_link_live(key).await
                    || self
                        .link_target(link)
                        .await
                        .is_err_and(|t| t.code == ErrorCode::Conflict)))
    }

    /// Whether intake link `key` (`intake:<hash>`) could take another submission: stored,
    /// unexpired, an attempt left (the filter a submission is admitted by). A store that
    /// cannot be read says yes: the page then answers "retry", never a live link dead.
    async fn intake_link_live(&self, key: &str) -> bool {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match self
            .core
            .records
            .intake_link(key.trim_start_matches("intake:"))
            .await
        {
            Ok(found) => found.is_some_and(|(_, l)| l.value.admits(now)),
            Err(_) => true,
        }
    }
}
