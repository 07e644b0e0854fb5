//! The redirect policy given to tower-http's `FollowRedirect`.

use http::Request;
use http_body::Body;
use tower_http::follow_redirect::policy::{Action, Attempt, FilterCredentials, Policy};

use super::error::{TooManyRedirects, UnsupportedRedirectScheme};
use crate::error::BoxError;

/// Follows at most `max` redirects, only to http and https, and drops credentials
/// (`Authorization`, `Cookie`, `Proxy-Authorization`) when a hop leaves the origin.
///
/// Unlike tower-http's `Limited` (which hands the last 3xx back), running out of hops is an
/// error, [`TooManyRedirects`], so a redirect loop cannot be mistaken for an answer.
#[derive(Clone, Debug)]
pub struct RedirectPolicy {
    remaining: usize,
    max: usize,
    credentials: FilterCredentials,
}

impl RedirectPolicy {
    /// A policy that follows up to `max` hops.
    pub fn new(max: usize) -> Self {
        RedirectPolicy {
            remaining: max,
            max,
            credentials: FilterCredentials::new(),
        }
    }
}

pub(crate) fn is_web_scheme(scheme: Option<&str>) -> bool {
    matches!(scheme, Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
}

impl<B> Policy<B, BoxError> for RedirectPolicy
where
    B: Body + Clone,
{
    fn redirect(&mut self, attempt: &Attempt<'_>) -> Result<Action, BoxError> {
        let location = attempt.location();
        if !is_web_scheme(location.scheme_str()) {
            return Err(Box::new(UnsupportedRedirectScheme {
                scheme: location.scheme_str().unwrap_or("").to_owned(),
            }));
        }
        if self.remaining == 0 {
            return Err(Box::new(TooManyRedirects { max: self.max }));
        }
        self.remaining -= 1;
        Policy::<B, BoxError>::redirect(&mut self.credentials, attempt)
    }

    fn on_request(&mut self, request: &mut Request<B>) {
        Policy::<B, BoxError>::on_request(&mut self.credentials, request)
    }

    fn clone_body(&self, body: &B) -> Option<B> {
        Some(body.clone())
    }
}
