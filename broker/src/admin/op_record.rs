//! What the audit record says of an admin operation: its action name, what it is about
//! (the target a refusal's record names), and whether it only reads.

use super::request::AdminOp;
use crate::model::Status;

impl AdminOp {
    pub(super) fn action(&self) -> String {
        match self {
            AdminOp::List(c, _) => format!("{}.list", c.noun()),
            AdminOp::Show(c, _) => format!("{}.show", c.noun()),
            AdminOp::AddTenant(_) => "tenant.add".into(),
            AdminOp::AddWorker(_) => "worker.add".into(),
            AdminOp::UpdateWorker(..) => "worker.update".into(),
            AdminOp::AddOperator(_) => "operator.add".into(),
            AdminOp::AddInstance(_) => "instance.add".into(),
            AdminOp::AddBinding(_) => "binding.add".into(),
            AdminOp::SetStatus(c, _, Status::Active) => format!("{}.enable", c.noun()),
            AdminOp::SetStatus(c, _, _) => format!("{}.disable", c.noun()),
            AdminOp::Remove(c, _) => format!("{}.remove", c.noun()),
            AdminOp::SecretSet(..) => "secret.set".into(),
            AdminOp::SecretRotate(..) => "secret.rotate".into(),
            AdminOp::SecretPromote(..) => "secret.promote".into(),
            AdminOp::SecretSelfRotate(..) => "secret.self_rotate".into(),
            AdminOp::IntakeCreate(..) => "intake.create".into(),
            AdminOp::IntakeList => "intake.list".into(),
            AdminOp::IntakeRevoke(..) => "intake.revoke".into(),
            AdminOp::OnboardingList => "onboarding.list".into(),
            AdminOp::OnboardingRevoke(..) => "onboarding.revoke".into(),
            AdminOp::SecretDestroy(..) => "secret.destroy".into(),
            AdminOp::Probe(_) => "binding.probe".into(),
            AdminOp::Onboard(p, ..) => format!("onboard.{p}"),
            AdminOp::Governance(g) => g.action(),
            AdminOp::UnclaimedList => "unclaimed.list".into(),
            AdminOp::ClaimUnclaimed(..) => "unclaimed.claim".into(),
            AdminOp::IgnoreUnclaimed(..) => "unclaimed.ignore".into(),
            AdminOp::KeysList(k) => format!("keys.{k}.list"),
            AdminOp::KeysAdd(k, _) => format!("keys.{k}.add"),
            AdminOp::KeysActivate(k, _) => format!("keys.{k}.activate"),
            AdminOp::KeysRetire(k, _) => format!("keys.{k}.retire"),
            AdminOp::RevokeCached(p) => format!("provider.{p}.revoke_cached"),
            AdminOp::IssuerKeysList => "keys.issuer.list".into(),
            AdminOp::IssuerJwks => "issuer.jwks".into(),
            AdminOp::IssuerRotate(_) => "keys.issuer.rotate".into(),
            AdminOp::IssuerRetire(..) => "keys.issuer.retire".into(),
            AdminOp::FlagTrustBroken { .. } => "binding.flag_trust_broken".into(),
        }
    }

    /// What the operation names (the record, binding, tenant or key it is about), for the
    /// record of its refusal: as the request claimed it, so only in the detail, never in the
    /// record's own `tenant` or `binding` fields (a tenant's export would carry another
    /// tenant's identifiers that a refused request named). Empty when it names nothing.
    pub(super) fn target(&self) -> String {
        // A path's id is whatever the client sent: bounded.
        let id = |s: &str| s.chars().take(128).collect::<String>();
        match self {
            AdminOp::Show(c, i) | AdminOp::SetStatus(c, i, _) | AdminOp::Remove(c, i) => {
                format!("{}={}", c.noun(), id(i))
            }
            AdminOp::AddTenant(t) => format!("tenant={}", t.id),
            AdminOp::AddWorker(w) => format!(
                "worker={} tenants=[{}]",
                w.id,
                w.tenants
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            AdminOp::UpdateWorker(w, t) => format!(
                "worker={} tenants=[{}]",
                id(w),
                t.tenants
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            AdminOp::AddOperator(o) => format!("operator={}", o.id),
            AdminOp::AddInstance(i) => format!(
                "instance={} tenant={} binding={}",
                i.id, i.tenant, i.binding
            ),
            AdminOp::AddBinding(b) => format!(
                "binding={} tenant={} provider={}",
                b.id,
                b.tenant,
                id(&b.provider)
            ),
            AdminOp::SecretSet(b, ..)
            | AdminOp::SecretRotate(b, ..)
            | AdminOp::SecretSelfRotate(b)
            | AdminOp::Probe(b)
            | AdminOp::SecretDestroy(b, None, _) => format!("binding={}", id(b)),
            AdminOp::SecretPromote(b, v) | AdminOp::SecretDestroy(b, Some(v), _) => {
                format!("binding={} version={v}", id(b))
            }
            AdminOp::IntakeCreate(n) => format!("binding={}", id(&n.binding)),
            // Only an id of a link's shape: what else was sent may be the link's state or
            // token itself (an operator pasting the URL), never to be recorded.
            AdminOp::IntakeRevoke(i) | AdminOp::OnboardingRevoke(i) => {
                if super::intake::is_intake_link_id(i)
                    || super::outstanding::is_onboarding_link_id(i)
                {
                    format!("link={i}")
                } else {
                    "link=(not a link id)".to_owned()
                }
            }
            AdminOp::Onboard(p, t, ..) => format!("provider={} tenant={t}", id(p)),
            AdminOp::KeysAdd(k, _) => format!("keys={}", id(k)),
            AdminOp::KeysActivate(k, v) | AdminOp::KeysRetire(k, v) => {
                format!("keys={} version={v}", id(k))
            }
            AdminOp::IssuerRetire(v, _) => format!("issuer_key={v}"),
            AdminOp::ClaimUnclaimed(i, t, _) => format!("installation={} tenant={t}", id(i)),
            AdminOp::FlagTrustBroken { binding, .. } => format!("binding={}", id(binding)),
            AdminOp::Governance(g) => g.target(),
            _ => String::new(),
        }
    }

    pub(super) fn is_read(&self) -> bool {
        matches!(
            self,
            AdminOp::List(..)
                | AdminOp::Show(..)
                | AdminOp::KeysList(_)
                | AdminOp::IntakeList
                | AdminOp::OnboardingList
                | AdminOp::IssuerKeysList
                | AdminOp::IssuerJwks
        ) || matches!(self, AdminOp::Governance(g) if g.is_read())
    }
}
