//! `credbroker lint-templates`: the onboarding artifacts we ship must stay within the
//! least-privilege ceilings in policies/. Each provider lints its own folder of
//! onboarding-templates/ (declared in its catalog entry); a policy file that is missing or
//! unreadable fails the lint: no ceiling, no pass.

use std::path::Path;

use credbroker_providers::CATALOG;

/// Lints every provider's templates under `templates`; returns the findings (empty: all
/// good).
///
/// # Errors
/// When a policy file or template cannot be read or parsed.
pub fn lint_templates(templates: &Path, policies: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut linted = 0;
    for lint in CATALOG.iter().filter_map(|d| d.template_lint.as_ref()) {
        let dir = templates.join(lint.dir);
        if dir.exists() {
            linted += 1;
            out.extend((lint.run)(&dir, policies)?);
        }
    }
    if linted == 0 {
        out.push(format!("{}: no templates", templates.display()));
    }
    Ok(out)
}
