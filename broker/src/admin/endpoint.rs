//! The admin API's HTTP face: who is asking (an operator's certificate, or a refusal
//! audited for any other), the request parsed into an operation, run, and answered.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::*;

impl AdminService {
    /// Handles one HTTP admin request: identity check, parse, run, audit.
    pub async fn handle_http(
        self: &Arc<Self>,
        peer: Option<&PeerIdentity>,
        method: &http::Method,
        path: &str,
        body: Result<Zeroizing<Vec<u8>>, ApiError>,
        request_id: &str,
    ) -> Answer {
        self.core.metrics.admin_requests.inc();
        let actor = peer.map_or_else(|| "unidentified".to_owned(), PeerIdentity::audit_name);
        let parsed = match peer {
            Some(PeerIdentity::Operator(name)) => match self.standing(name).await {
                Ok(record) => body
                    .and_then(|b| parse_admin_request(method, path, &b))
                    .map(|op| match op {
                        AdminOp::AddOperator(mut o) => {
                            o.by = Some(name.clone());
                            AdminOp::AddOperator(o)
                        }
                        other => other,
                    })
                    .map(|op| (op, record)),
                Err(e) => Err(e),
            },
            _ => Err(ApiError::new(
                ErrorCode::OperatorRequired,
                "the admin API requires an operator certificate",
            )),
        };
        let result = match parsed {
            Ok((op, admitted)) => {
                self.execute_admitted(&actor, op, request_id, admitted)
                    .await
            }
            Err(err) => {
                let event = AuditEvent {
                    kind: "admin".into(),
                    // Both bounded: any certificate holder can send any method and path.
                    action: format!(
                        "admin {} {}",
                        sanitize_path(&method.as_str().chars().take(16).collect::<String>()),
                        sanitize_path(path)
                    ),
                    request_id: request_id.to_owned(),
                    actor: actor.clone(),
                    outcome: "denied".into(),
                    error_code: Some(err.code.as_str().to_owned()),
                    ..Default::default()
                };
                match self.core.audit.append(event).await {
                    Ok(r) => Err((err, Some(r))),
                    Err(_) => Err((
                        ApiError::new(ErrorCode::AuditUnavailable, "audit log unavailable"),
                        None,
                    )),
                }
            }
        };
        match result {
            Ok(AdminOutcome {
                raw: Some(raw),
                created,
                receipt,
                ..
            }) if raw.first() == Some(&b'{') => {
                // `{"audit_id":…,"request_id":…,` + the object's members.
                let mut body = Zeroizing::new(Vec::with_capacity(raw.len() + 96));
                body.extend_from_slice(
                    format!(
                        "{{\"audit_id\":{},\"request_id\":{}",
                        json!(receipt.audit_id),
                        json!(request_id)
                    )
                    .as_bytes(),
                );
                if raw.get(1) != Some(&b'}') {
                    body.push(b',');
                }
                body.extend_from_slice(&raw[1..]);
                Answer {
                    status: if created {
                        http::StatusCode::CREATED
                    } else {
                        http::StatusCode::OK
                    },
                    body,
                }
            }
            Ok(outcome) => {
                let mut body = outcome.response;
                if let Value::Object(map) = &mut body {
                    map.insert("audit_id".into(), json!(outcome.receipt.audit_id));
                    map.insert("request_id".into(), json!(request_id));
                }
                Answer {
                    status: if outcome.created {
                        http::StatusCode::CREATED
                    } else {
                        http::StatusCode::OK
                    },
                    body: Zeroizing::new(serde_json::to_vec(&body).unwrap_or_default()),
                }
            }
            Err((err, receipt)) => error_answer(
                &err,
                receipt.as_ref().map(|r| r.audit_id.as_str()),
                request_id,
            ),
        }
    }
}

/// The path with anything that is not an id-safe character replaced, for audit records.
fn sanitize_path(path: &str) -> String {
    path.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "/_.-".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}
