//! The query strings the admin routes take (`?force=`, `?limit=&after=`, the inventory's
//! windows). Each route names the parameters it takes; every one is read through [`params`],
//! which refuses any other name and a name given twice, so the routes differ only in the
//! values they accept.

use crate::api_error::ApiError;

/// The values of `names` in `query`, in that order (`None`: not given). `takes` says which
/// parameters the route takes, for the refusal of any other.
///
/// # Errors
/// `bad_request` for an unknown name or a name given twice.
pub(super) fn params<const N: usize>(
    query: &str,
    names: [&str; N],
    takes: &str,
) -> Result<[Option<String>; N], ApiError> {
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let Some(i) = names.iter().position(|n| *n == name) else {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter: {takes}"
            )));
        };
        if values[i].replace(value.into_owned()).is_some() {
            return Err(ApiError::bad_request(format!(
                "{name} is given more than once"
            )));
        }
    }
    Ok(values)
}

/// The query of `DELETE …/secret/{version}`: `force=true|false`. Whether the active version
/// may be destroyed.
pub(super) fn destroy_force(query: &str) -> Result<bool, ApiError> {
    let [force] = params(query, ["force"], "this route takes only force")?;
    match force.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::bad_request("force must be true or false")),
    }
}

/// The most records one page of a listing holds (and the default).
pub const PAGE_MAX: usize = 1000;

/// One page of a listing (`GET /v1/admin/{collection}?limit=N&after=ID`): at most `limit`
/// records, all after the id `after` when given, in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The id the page starts after (the previous page's `next`).
    pub after: Option<String>,
    /// The most records the page holds, 1 to [`PAGE_MAX`].
    pub limit: usize,
}

/// A listing's query.
///
/// # Errors
/// `bad_request` naming the parameter.
pub(super) fn page_query(query: &str) -> Result<Page, ApiError> {
    let [after, limit] = params(query, ["after", "limit"], "a listing takes limit and after")?;
    // A record id, as every listed table is keyed: it goes into the audit record and the
    // store's query.
    if after.as_deref().is_some_and(|a| !crate::ids::valid_id(a)) {
        return Err(ApiError::bad_request(
            "after must be a record id (the previous page's next)",
        ));
    }
    let limit = match limit {
        None => PAGE_MAX,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit must be a number of records from 1 to {PAGE_MAX}"
                ))
            })?,
    };
    Ok(Page { after, limit })
}

#[cfg(test)]
mod tests {
    use super::{destroy_force, page_query, params, Page, PAGE_MAX};

    #[test]
    fn every_route_refuses_an_unknown_or_repeated_parameter_alike() {
        let e = params("a=1&b=2", ["a"], "this route takes a").unwrap_err();
        assert!(
            e.message
                .contains("unknown query parameter: this route takes a"),
            "{e:?}"
        );
        let e = params("a=1&a=2", ["a", "b"], "x").unwrap_err();
        assert!(e.message.contains("a is given more than once"), "{e:?}");
        assert_eq!(
            params("b=2&a=%20", ["a", "b"], "x").unwrap(),
            [Some(" ".to_owned()), Some("2".to_owned())]
        );
        assert_eq!(params("", ["a"], "x").unwrap(), [None]);
    }

    #[test]
    fn force_and_pages_read_their_values() {
        assert!(!destroy_force("").unwrap());
        assert!(destroy_force("force=true").unwrap());
        assert!(destroy_force("force=yes").is_err());
        assert_eq!(
            page_query("").unwrap(),
            Page {
                after: None,
                limit: PAGE_MAX
            }
        );
        assert_eq!(
            page_query("limit=2&after=t0001").unwrap(),
            Page {
                after: Some("t0001".into()),
                limit: 2
            }
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "after=",
            "after=a%00",
            "after=a%20b",
        ] {
            assert!(page_query(bad).is_err(), "{bad}");
        }
    }
}
